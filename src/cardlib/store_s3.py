"""S3 backend: managed multipart transfers, region checks, no orphaned parts."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from cardlib.store import CHUNK, ObjectInfo, Store, StoreError, StoreRegionError, parse_s3_uri, sha256_file, validate_key

_MARKER = ".keep"  # S3 has no folders; an empty marker object makes one visible and listable


def bucket_region(client, bucket: str) -> str:
    try:
        loc = client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except ClientError as e:
        raise StoreError(f"cannot read the region of bucket {bucket!r}: {e.response['Error'].get('Code')}") from None
    return loc or "us-east-1"  # S3 reports us-east-1 as an empty constraint


class S3Store(Store):
    def __init__(self, uri: str, region: Optional[str] = None, *, multipart_threshold: int = 64 << 20,
                 multipart_chunksize: int = 64 << 20, max_concurrency: int = 8, client=None):
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        session = boto3.session.Session()
        self.region = region or session.region_name or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.client = client or session.client("s3", region_name=self.region)
        # explicit transfer config: multipart upload and UploadPartCopy above the threshold, never a
        # single CopyObject for large objects (S3 refuses those above 5 GB)
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=multipart_chunksize,
                                       max_concurrency=max_concurrency, use_threads=max_concurrency > 1)
        actual = bucket_region(self.client, self.bucket)
        if actual != self.region:
            raise StoreRegionError(
                f"bucket {self.bucket!r} is in {actual} but the client is configured for {self.region}; "
                f"set store.region: {actual} (or AWS_DEFAULT_REGION) so that transfers and image URIs agree")

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _abort_incomplete(self, full_key: str) -> int:
        """Abort multipart uploads left for this key (a failed transfer must leave no parts behind)."""
        n = 0
        resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full_key)
        for up in resp.get("Uploads", []):
            if up["Key"] == full_key:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=up["UploadId"])
                n += 1
        return n

    def put(self, local_path, key):
        full = self._key(key)
        digest, size = sha256_file(local_path), Path(local_path).stat().st_size
        try:
            self.client.upload_file(str(local_path), self.bucket, full, Config=self.transfer,
                                    ExtraArgs={"Metadata": {"sha256": digest}})
        except BaseException:
            self._abort_incomplete(full)
            raise
        return ObjectInfo(key, self.uri_for(key), size, digest)

    def put_bytes(self, data, key):
        digest = hashlib.sha256(data).hexdigest()
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": digest})
        return ObjectInfo(key, self.uri_for(key), len(data), digest)

    def get(self, key, local_path):
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_path.with_name(f".{local_path.name}.part")
        try:
            self.client.download_file(self.bucket, self._key(key), str(tmp), Config=self.transfer)
            os.replace(tmp, local_path)
        except ClientError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot get {self.uri_for(key)}: {e.response['Error'].get('Code')}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return local_path

    def get_bytes(self, key):
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as e:
            raise StoreError(f"cannot get {self.uri_for(key)}: {e.response['Error'].get('Code')}") from None

    def list(self, prefix=""):
        if prefix:
            validate_key(prefix)
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        if prefix.endswith("/") and not full.endswith("/"):
            full += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys += [o["Key"][strip:] for o in page.get("Contents", []) if not o["Key"].endswith("/" + _MARKER)]
        return sorted(keys)

    def _head(self, key):
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response["Error"].get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, key):
        return self._head(key) is not None

    def size(self, key):
        head = self._head(key)
        if head is None:
            raise StoreError(f"no object {self.uri_for(key)}")
        return int(head["ContentLength"])

    def sha256(self, key):
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as e:
            raise StoreError(f"cannot read {self.uri_for(key)}: {e.response['Error'].get('Code')}") from None
        h = hashlib.sha256()
        for block in iter(lambda: body.read(CHUNK), b""):
            h.update(block)
        return h.hexdigest()

    def copy(self, src_uri, key):
        """S3→S3 managed copy: UploadPartCopy above the threshold, so a 5.3 GB object goes through."""
        src_bucket, src_key = parse_s3_uri(src_uri)
        try:
            head = self.client.head_object(Bucket=src_bucket, Key=src_key)
        except ClientError as e:
            raise StoreError(f"copy source {src_uri} is not readable: {e.response['Error'].get('Code')}") from None
        digest = head.get("Metadata", {}).get("sha256")
        if not digest:  # not uploaded by cardlib (e.g. a training job's model.tar.gz): hash the bytes once
            body = self.client.get_object(Bucket=src_bucket, Key=src_key)["Body"]
            h = hashlib.sha256()
            for block in iter(lambda: body.read(CHUNK), b""):
                h.update(block)
            digest = h.hexdigest()
        full = self._key(key)
        try:
            self.client.copy({"Bucket": src_bucket, "Key": src_key}, self.bucket, full, Config=self.transfer,
                             ExtraArgs={"Metadata": {"sha256": digest}, "MetadataDirective": "REPLACE"})
        except BaseException:
            self._abort_incomplete(full)
            raise
        return ObjectInfo(key, self.uri_for(key), int(head["ContentLength"]), digest)

    def delete(self, key):
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def _mkdir(self, folder):
        self.client.put_object(Bucket=self.bucket, Key=self._key(f"{folder.rstrip('/')}/{_MARKER}"), Body=b"")

    def folder_exists(self, folder):
        resp = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(folder.rstrip("/")) + "/", MaxKeys=1)
        return resp.get("KeyCount", 0) > 0

"""The same store suite on the local backend and on a real S3 HTTP endpoint (moto server on 127.0.0.1)."""
import hashlib
import os

import boto3
import pytest

from cardlib.store import Layout, LocalStore, StoreError, StoreRegionError, open_store
from cardlib.store_s3 import S3Store

MB = 1024 * 1024
REGION = "us-east-2"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/project/pokemon-card-recognition", REGION,
                      multipart_threshold_mb=5, multipart_chunksize_mb=5, max_concurrency=1)


def test_put_get_list_exists_sha256(store, tmp_path):
    src = tmp_path / "model.safetensors"
    data = os.urandom(300_000)
    src.write_bytes(data)
    info = store.put(src, "models/efficientnet-student/stage2/v2.0/student.safetensors")
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert info.uri == store.uri_for(info.key) and store.key_for(info.uri) == info.key
    assert store.exists(info.key) and not store.exists("models/missing.bin")
    assert store.sha256(info.key) == info.sha256 and store.size(info.key) == len(data)
    out = store.get(info.key, tmp_path / "back" / "x.bin")
    assert out.read_bytes() == data
    store.put_text("{}", "metadata/project_manifest.json")
    assert store.get_text("metadata/project_manifest.json") == "{}"
    assert store.list("models/") == [info.key]
    assert set(store.list()) == {info.key, "metadata/project_manifest.json"}
    store.delete(info.key)
    assert not store.exists(info.key)
    with pytest.raises(StoreError):
        store.get_bytes(info.key)


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a//b", "a/../b", "a\\b", "", "a/./b"])
def test_keys_that_escape_are_refused(store, key):
    with pytest.raises(StoreError):
        store.put_bytes(b"x", key)


def test_init_creates_the_seed_layout_idempotently(store):
    layout = Layout(teacher_version="v1.0", stage1_version="v1.0", stage2_version="v2.0", hailo_version="v2.1")
    created = store.init(layout)
    assert "models/dinov3-teacher/v1.0/pytorch" in created and "pipelines/deployment" in created
    assert len([f for f in created if f.count("/") >= 1]) >= 17  # the seed's 17 folders (plus parents)
    assert store.missing_folders(layout) == []
    assert store.init(layout) == []  # second time: nothing to do
    assert store.list() == []  # folder markers are not objects


def test_copy_within_the_store(store, tmp_path):
    data = os.urandom(10_000)
    src = store.put_bytes(data, "incoming/model.tar.gz")
    dst = store.copy(src.uri, "models/dinov3-teacher/v1.0/pytorch/model.tar.gz")
    assert store.get_bytes(dst.key) == data and dst.sha256 == src.sha256


def test_s3_copy_above_threshold_is_multipart_and_identical(s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/p", REGION, multipart_threshold_mb=5, multipart_chunksize_mb=5,
                       max_concurrency=1)
    data = os.urandom(12 * MB)
    big = tmp_path / "teacher.tar.gz"
    big.write_bytes(data)
    src = store.put(big, "jobs/teacher-job/output/model.tar.gz")
    calls = {"UploadPartCopy": 0, "CopyObject": 0}
    for op in calls:
        store.client.meta.events.register(f"before-call.s3.{op}",
                                          lambda op=op, **kw: calls.__setitem__(op, calls[op] + 1))
    dst = store.copy(src.uri, "models/dinov3-teacher/v1.0/pytorch/model.tar.gz")
    assert calls["UploadPartCopy"] == 3 and calls["CopyObject"] == 0  # 12 MiB in 5 MiB parts
    assert store.sha256(dst.key) == hashlib.sha256(data).hexdigest() == dst.sha256


def test_s3_small_copy_is_a_single_copyobject(s3_bucket):
    store = open_store(f"s3://{s3_bucket}/p", REGION, multipart_threshold_mb=5, multipart_chunksize_mb=5)
    src = store.put_bytes(b"small", "a/x.bin")
    calls = []
    store.client.meta.events.register("before-call.s3.CopyObject", lambda **kw: calls.append(1))
    store.copy(src.uri, "b/x.bin")
    assert calls == [1] and store.get_bytes("b/x.bin") == b"small"


def test_s3_region_mismatch_is_refused(s3_bucket):
    with pytest.raises(StoreRegionError, match="us-east-2"):
        S3Store(f"s3://{s3_bucket}/p", region="us-west-2")


def test_s3_interrupted_multipart_upload_leaves_no_parts(s3_bucket, tmp_path):
    store = open_store(f"s3://{s3_bucket}/p", REGION, multipart_threshold_mb=5, multipart_chunksize_mb=5,
                       max_concurrency=1)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MB))
    parts = []

    def cut_after_first_part(**kw):
        parts.append(1)
        if len(parts) == 2:
            raise ConnectionError("network cut during part 2")

    store.client.meta.events.register("before-call.s3.UploadPart", cut_after_first_part)
    with pytest.raises(Exception):
        store.put(big, "models/dinov3-teacher/v1.0/pytorch/model.tar.gz")
    s3 = boto3.client("s3", region_name=REGION)
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert not store.exists("models/dinov3-teacher/v1.0/pytorch/model.tar.gz")


def test_local_failed_put_keeps_the_old_object_and_no_temp_files(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_bytes(b"v1", "metadata/project_manifest.json")
    with pytest.raises(FileNotFoundError):
        store.put(tmp_path / "does-not-exist", "metadata/project_manifest.json")
    assert store.get_bytes("metadata/project_manifest.json") == b"v1"
    assert [p.name for p in (tmp_path / "store" / "metadata").iterdir()] == ["project_manifest.json"]


def test_unsupported_uri_is_refused():
    with pytest.raises(StoreError, match="unsupported"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="bucket names"):
        open_store("s3://ab/x")

"""The project store: one interface, a local-folder backend and an S3 backend, and the one layout."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

_KEY_PART = re.compile(r"^[A-Za-z0-9_.@=+-][A-Za-z0-9_.@=+ -]*$")
CHUNK = 8 * 1024 * 1024


class StoreError(RuntimeError):
    """A store operation that cannot go ahead; the message says why."""


class StoreRegionError(StoreError):
    """The bucket lives in another region than the client."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    uri: str
    size: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def validate_key(key: str) -> str:
    """Refuse keys that could escape the store root: absolute, '..', backslashes, empty parts."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key:
        raise StoreError(f"invalid store key {key!r}")
    parts = key.rstrip("/").split("/")
    for p in parts:
        if p in ("", ".", "..") or not _KEY_PART.match(p):
            raise StoreError(f"invalid store key {key!r} (part {p!r})")
    return key


def validate_id(value: str, what: str = "id") -> str:
    """Ids that become file or key names: one safe path segment."""
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", value) or ".." in value:
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '.', '_', '-' (no separators, no '..')")
    return value


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write via a temp file in the same folder and os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------- layout

@dataclass(frozen=True)
class Layout:
    """Where everything lives in the store (the seed's structure); versions come from params."""

    teacher_version: str = "v1.0"
    stage1_version: str = "v1.0"
    stage2_version: str = "v2.0"
    hailo_version: str = "v2.1"

    manifest: str = "metadata/project_manifest.json"
    experiments_index: str = "experiments/mlflow/experiments_index.json"
    mlflow_artifacts: str = "experiments/mlflow"
    dashboards: str = "analytics/dashboards"
    reports: str = "analytics/reports"
    metrics: str = "analytics/metrics"

    @classmethod
    def from_params(cls, params) -> "Layout":
        return cls(
            teacher_version=params.teacher.version,
            stage1_version=params.distill.stage1.version,
            stage2_version=params.distill.stage2.version,
            hailo_version=params.hailo.version,
        )

    def teacher(self, fmt: str = "pytorch") -> str:
        return f"models/dinov3-teacher/{self.teacher_version}/{fmt}"

    @property
    def stage1(self) -> str:
        return f"models/efficientnet-student/stage1/{self.stage1_version}"

    @property
    def stage2(self) -> str:
        return f"models/efficientnet-student/stage2/{self.stage2_version}"

    @property
    def hailo(self) -> str:
        return f"models/efficientnet-hailo/{self.hailo_version}"

    @property
    def calibration(self) -> str:
        return "models/efficientnet-hailo/calibration"

    def profiling(self, model: str) -> str:
        if model not in ("teacher", "student_stage1", "student_stage2"):
            raise StoreError(f"unknown profiling target {model!r}")
        return f"profiling/{model}"

    def run_reports(self, run_id: str) -> str:
        return f"{self.reports}/{validate_id(run_id, 'run id')}"

    def pipeline(self, kind: str) -> str:
        if kind not in ("training", "inference", "deployment"):
            raise StoreError(f"unknown pipeline kind {kind!r}")
        return f"pipelines/{kind}"

    def folders(self) -> list[str]:
        """Every folder of the structure, in creation order (the seed's 17 plus their parents)."""
        return [
            "metadata",
            "models", "models/dinov3-teacher", f"models/dinov3-teacher/{self.teacher_version}",
            self.teacher("pytorch"), self.teacher("onnx"),
            "models/efficientnet-student", "models/efficientnet-student/stage1", self.stage1,
            "models/efficientnet-student/stage2", self.stage2,
            "models/efficientnet-hailo", self.hailo, self.calibration,
            "experiments", self.mlflow_artifacts,
            "profiling", self.profiling("teacher"), self.profiling("student_stage1"), self.profiling("student_stage2"),
            "analytics", self.dashboards, self.reports, self.metrics,
            "pipelines", self.pipeline("training"), self.pipeline("inference"), self.pipeline("deployment"),
        ]


# ---------------------------------------------------------------- interface

class Store(ABC):
    """put/get/list/exists/copy with sha256; keys are '/'-separated paths below the store root."""

    uri: str

    @abstractmethod
    def put(self, local_path: str | Path, key: str) -> ObjectInfo: ...

    @abstractmethod
    def put_bytes(self, data: bytes, key: str) -> ObjectInfo: ...

    @abstractmethod
    def get(self, key: str, local_path: str | Path) -> Path: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys of objects below prefix (folder markers excluded), sorted."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def sha256(self, key: str) -> str:
        """sha256 of the object's bytes, computed from its content (never trusted from metadata)."""

    @abstractmethod
    def copy(self, src_uri: str, key: str) -> ObjectInfo:
        """Copy an object given by URI (same backend) to key."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def _mkdir(self, folder: str) -> None: ...

    @abstractmethod
    def folder_exists(self, folder: str) -> bool: ...

    def uri_for(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{validate_key(key)}"

    def key_for(self, uri: str) -> str:
        """Inverse of uri_for; refuses URIs outside this store."""
        root = self.uri.rstrip("/") + "/"
        if not uri.startswith(root):
            raise StoreError(f"{uri!r} is not inside the store {self.uri!r}")
        return validate_key(uri[len(root):])

    def put_text(self, text: str, key: str) -> ObjectInfo:
        return self.put_bytes(text.encode("utf-8"), key)

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8")

    def info(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, self.uri_for(key), self.size(key), self.sha256(key))

    def put_dir(self, local_dir: str | Path, prefix: str) -> list[ObjectInfo]:
        local_dir = Path(local_dir)
        return [self.put(p, f"{prefix.rstrip('/')}/{p.relative_to(local_dir).as_posix()}")
                for p in sorted(local_dir.rglob("*")) if p.is_file()]

    def get_dir(self, prefix: str, local_dir: str | Path) -> Path:
        local_dir = Path(local_dir)
        prefix = prefix.rstrip("/") + "/"
        for key in self.list(prefix):
            self.get(key, local_dir / key[len(prefix):])
        return local_dir

    def init(self, layout: Layout) -> list[str]:
        """Create the structure idempotently; returns the folders that were missing."""
        created = []
        for folder in layout.folders():
            if not self.folder_exists(folder):
                self._mkdir(folder)
                created.append(folder)
        return created

    def missing_folders(self, layout: Layout) -> list[str]:
        return [f for f in layout.folders() if not self.folder_exists(f)]


class LocalStore(Store):
    """A folder on disk; every write is atomic (temp file + os.replace)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_posix()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, local_path, key):
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
        h, size = hashlib.sha256(), 0
        try:
            with open(local_path, "rb") as src, os.fdopen(fd, "wb") as out:
                for block in iter(lambda: src.read(CHUNK), b""):
                    h.update(block)
                    size += len(block)
                    out.write(block)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ObjectInfo(key, self.uri_for(key), size, h.hexdigest())

    def put_bytes(self, data, key):
        atomic_write_bytes(self._path(key), data)
        return ObjectInfo(key, self.uri_for(key), len(data), hashlib.sha256(data).hexdigest())

    def get(self, key, local_path):
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"no object {key!r} in {self.uri}")
        local_path = Path(local_path)
        _atomic_copy(src, local_path)
        return local_path

    def get_bytes(self, key):
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"no object {key!r} in {self.uri}")
        return src.read_bytes()

    def list(self, prefix=""):
        base = self.root / prefix if prefix else self.root
        if prefix:
            validate_key(prefix)
        if not base.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def exists(self, key):
        return self._path(key).is_file()

    def size(self, key):
        if not self.exists(key):
            raise StoreError(f"no object {key!r} in {self.uri}")
        return self._path(key).stat().st_size

    def sha256(self, key):
        if not self.exists(key):
            raise StoreError(f"no object {key!r} in {self.uri}")
        return sha256_file(self._path(key))

    def copy(self, src_uri, key):
        src = Path(src_uri[7:] if src_uri.startswith("file://") else src_uri)
        if not src.is_file():
            raise StoreError(f"copy source {src_uri!r} does not exist")
        return self.put(src, key)

    def delete(self, key):
        self._path(key).unlink(missing_ok=True)

    def _mkdir(self, folder):
        self._path(folder).mkdir(parents=True, exist_ok=True)

    def folder_exists(self, folder):
        return self._path(folder).is_dir()


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_s3_uri(uri: str) -> tuple[str, str]:
    m = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", uri)
    if not m:
        raise StoreError(f"not a valid s3:// URI: {uri!r} (bucket names are 3-63 lowercase letters, digits, '.', '-')")
    return m.group(1), (m.group(2) or "").strip("/")


def open_store(uri: str, region: Optional[str] = None, *, multipart_threshold_mb: int = 64,
               multipart_chunksize_mb: int = 64, max_concurrency: int = 8) -> Store:
    """A Store for a local folder or an s3:// prefix."""
    if uri.startswith("s3://"):
        from cardlib.store_s3 import S3Store

        return S3Store(uri, region=region, multipart_threshold=multipart_threshold_mb * 1024 * 1024,
                       multipart_chunksize=multipart_chunksize_mb * 1024 * 1024, max_concurrency=max_concurrency)
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"unsupported store URI {uri!r}: use a folder or s3://bucket/prefix")
    return LocalStore(uri[7:] if uri.startswith("file://") else uri)


def store_from_params(params) -> Store:
    s = params.store
    return open_store(s.uri, s.region, multipart_threshold_mb=s.multipart_threshold_mb,
                      multipart_chunksize_mb=s.multipart_chunksize_mb, max_concurrency=s.max_concurrency)


def cache_dir(*parts: str) -> Path:
    """cardlib's local cache (downloaded weights, bundles, MLflow for remote stores): $CARDLIB_CACHE_DIR or
    ~/.cache/cardlib."""
    root = Path(os.environ.get("CARDLIB_CACHE_DIR") or Path.home() / ".cache" / "cardlib")
    return root.joinpath(*parts)


def materialize(uri: str, cache_dir: str | Path, region: Optional[str] = None) -> Path:
    """A local path for a file/folder URI: local paths as they are; s3:// objects or prefixes downloaded."""
    if not uri.startswith("s3://"):
        p = Path(uri[7:] if uri.startswith("file://") else uri).expanduser()
        if not p.exists():
            raise StoreError(f"{uri!r} does not exist")
        return p
    bucket, key = parse_s3_uri(uri)
    store = open_store(f"s3://{bucket}", region)
    name = key.rstrip("/").split("/")[-1] or bucket
    target = Path(cache_dir) / validate_id(name, "object name")
    if key and store.exists(key):
        return store.get(key, target)
    keys = store.list(key.rstrip("/") + "/" if key else "")
    if not keys:
        raise StoreError(f"nothing at {uri!r}")
    return store.get_dir(key, target)

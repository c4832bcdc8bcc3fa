"""Publish a run's models into the organized store: upload local files, S3→S3 copy remote ones, record sha256."""
from __future__ import annotations

import gzip
import logging
import posixpath
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, Optional

from tqdm import tqdm

from cardlib.store import Layout, LocalStore, ObjectInfo, Store, StoreError, materialize, sha256_file

log = logging.getLogger(__name__)

MODEL_IDS = ("teacher", "student_stage1", "student_stage2", "hailo")
KINDS = {"teacher": "dinov3-teacher", "student_stage1": "efficientnet-student",
         "student_stage2": "efficientnet-student", "hailo": "efficientnet-hailo"}
TARBALL = "model.tar.gz"


class PublishError(RuntimeError):
    """A model cannot be published as the stage dicts describe it; the message says which file and why."""


@dataclass
class ModelRecord:
    """One model as the stage dicts describe it (several stages may add files to the same model id)."""

    id: str
    version: str
    parent: Optional[str]
    config: dict
    mlflow_run_id: Optional[str] = None  # the training stage's MLflow run, when it logged one
    stages: list[str] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)  # output name → output dict (path/uri/sha256/size)
    metrics: dict[str, Any] = field(default_factory=dict)
    costs: list[dict] = field(default_factory=list)


def stage_list(stages: Iterable[dict] | Mapping[str, dict]) -> list[dict]:
    """Stage dicts in run order, from a list or a mapping stage name → dict."""
    if isinstance(stages, Mapping):
        items = []
        for name, d in stages.items():
            if d.get("stage", name) != name:
                raise PublishError(f"stage dict under {name!r} says it is stage {d.get('stage')!r}")
            items.append({**d, "stage": name})
        stages = items
    out = list(stages)
    for d in out:
        for key in ("stage", "status", "outputs"):
            if key not in d:
                raise PublishError(f"stage dict {d.get('stage', '?')!r} has no {key!r} (see the stage.json contract)")
    return sorted(out, key=lambda d: d["stage"])


def model_records(stages) -> dict[str, ModelRecord]:
    """Group the stages' `model` blocks by model id; the first stage gives version, parent and config."""
    records: dict[str, ModelRecord] = {}
    for d in stage_list(stages):
        model = d.get("model")
        if not model:
            continue
        mid = model.get("id")
        if mid not in MODEL_IDS:
            raise PublishError(f"stage {d['stage']!r}: model id {mid!r} is not one of {MODEL_IDS}")
        if d["status"] != "completed":
            raise PublishError(f"stage {d['stage']!r} is {d['status']!r}; its model {mid!r} cannot be published")
        rec = records.get(mid)
        if rec is None:
            rec = records[mid] = ModelRecord(mid, model["version"], model.get("parent"),
                                             dict(model.get("config") or {}), model.get("mlflow_run_id"))
        elif model["version"] != rec.version:
            raise PublishError(f"stage {d['stage']!r} says {mid} is {model['version']}, "
                               f"an earlier stage said {rec.version}")
        rec.stages.append(d["stage"])
        for name in model.get("files", []):
            if name not in d["outputs"]:
                raise PublishError(f"stage {d['stage']!r}: model file {name!r} is not among its outputs")
            if name in rec.outputs:
                raise PublishError(f"model {mid!r}: two stages both provide a file named {name!r}")
            rec.outputs[name] = {**d["outputs"][name], "_stage": d["stage"]}
        if mid == "hailo":  # the calibration set travels with the Hailo model
            for name, out in d["outputs"].items():
                if name.startswith("calibration") and name not in rec.outputs:
                    rec.outputs[name] = {**out, "_stage": d["stage"]}
        rec.metrics.update(d.get("metrics") or {})
        if d.get("cost"):
            rec.costs.append({**d["cost"], "stage": d["stage"]})
    return records


def layout_version(layout: Layout, model_id: str) -> str:
    return {"teacher": layout.teacher_version, "student_stage1": layout.stage1_version,
            "student_stage2": layout.stage2_version, "hailo": layout.hailo_version}[model_id]


def destination(layout: Layout, model_id: str, output_name: str, filename: str) -> str:
    """The store folder for one model file (the one mapping of model id → organized path)."""
    if model_id == "teacher":
        return layout.teacher("onnx" if filename.endswith(".onnx") else "pytorch")
    if model_id == "hailo":
        return layout.calibration if output_name.startswith("calibration") else layout.hailo
    return layout.stage1 if model_id == "student_stage1" else layout.stage2


def model_homes(layout: Layout) -> dict[str, tuple[str, ...]]:
    """Key prefixes of each model's organized folders: an object stored there belongs to that model."""
    return {"teacher": (f"models/dinov3-teacher/{layout.teacher_version}/",),
            "student_stage1": (layout.stage1 + "/",), "student_stage2": (layout.stage2 + "/",),
            "hailo": (layout.hailo + "/", layout.calibration + "/")}


def key_in_store(store: Store, uri: Optional[str]) -> Optional[str]:
    """The store key of a URI inside this store, else None."""
    if not uri:
        return None
    try:
        return store.key_for(uri)
    except StoreError:
        return None


def stored_sha256(store: Store, key: str) -> Optional[str]:
    """sha256 of an existing object: S3 uses the digest cardlib wrote at upload (no download), local hashes."""
    if not store.exists(key):
        return None
    client = getattr(store, "client", None)
    if client is not None and hasattr(store, "bucket"):
        head = client.head_object(Bucket=store.bucket, Key=store._key(key))
        recorded = head.get("Metadata", {}).get("sha256")
        if recorded:
            return recorded
    return store.sha256(key)


def ensure_file(store: Store, local: Path, key: str, expected_sha256: Optional[str] = None) -> ObjectInfo:
    """Upload local → key unless the store already holds the same bytes (same size and sha256)."""
    digest, size = sha256_file(local), local.stat().st_size
    if expected_sha256 and expected_sha256 != digest:
        raise PublishError(f"{local} changed since its stage recorded sha256 {expected_sha256[:12]}… "
                           f"(now {digest[:12]}…)")
    if store.exists(key) and store.size(key) == size and stored_sha256(store, key) == digest:
        log.info("unchanged, not re-uploaded: %s", key)
        return ObjectInfo(key, store.uri_for(key), size, digest)
    return store.put(local, key)


def ensure_copy(store: Store, src_uri: str, key: str, expected_sha256: Optional[str] = None) -> ObjectInfo:
    """Server-side copy (multipart above the store's threshold) unless the destination already has those bytes."""
    if src_uri == store.uri_for(key):
        if not store.exists(key):
            raise PublishError(f"{src_uri} is recorded as published but is not in the store, and there is no "
                               "local file to upload again")
        info = ObjectInfo(key, src_uri, store.size(key), stored_sha256(store, key))
    elif expected_sha256 and stored_sha256(store, key) == expected_sha256:
        log.info("unchanged, not re-copied: %s", key)
        info = ObjectInfo(key, store.uri_for(key), store.size(key), expected_sha256)
    else:
        info = store.copy(src_uri, key)
    if expected_sha256 and info.sha256 != expected_sha256:
        raise PublishError(f"{src_uri} has sha256 {info.sha256[:12]}…, its stage recorded {expected_sha256[:12]}…")
    return info


def _publish_output(store: Store, run_dir: Path, layout: Layout, model_id: str, name: str, out: dict,
                    cache: Path) -> list[ObjectInfo]:
    local = run_dir / out["path"] if out.get("path") else None
    uri, expected = out.get("uri"), out.get("sha256")
    if local is not None and not local.exists():
        local = None
    placed = key_in_store(store, uri)
    if placed and placed.startswith("models/"):  # its stage already put it in the organized layout: keep that key
        return [ensure_file(store, local, placed, expected) if local and local.is_file()
                else ensure_copy(store, uri, placed, expected)]
    is_s3 = bool(uri) and uri.startswith("s3://")
    if is_s3 and not isinstance(store, LocalStore):
        filename = PurePosixPath(uri).name
        return [ensure_copy(store, uri, f"{destination(layout, model_id, name, filename)}/{filename}", expected)]
    if local is None:
        if is_s3:  # a local store publishing an S3 artifact: fetch it once, then upload
            local = materialize(uri, cache)
        elif uri and Path(uri).exists():
            local = Path(uri)
        else:
            raise PublishError(f"output {name!r} of stage {out['_stage']!r}: {out.get('path')} does not exist in the "
                               "run dir and it has no uri to copy from; nothing to publish")
    prefix = destination(layout, model_id, name, local.name)
    if local.is_dir():
        return [ensure_file(store, p, f"{prefix}/{local.name}/{p.relative_to(local).as_posix()}")
                for p in sorted(local.rglob("*")) if p.is_file()]
    return [ensure_file(store, local, f"{prefix}/{local.name}", expected)]


def _attach_placed_outputs(store: Store, layout: Layout, stages, records: dict[str, ModelRecord]) -> None:
    """Outputs a stage already stored in a model's folder (e.g. the export stage's ONNX files) join that model;
    so does a SageMaker job's model.tar.gz (cost.artifact_uri) when the store is on S3."""
    homes = model_homes(layout)
    claimed = {o.get("uri") for rec in records.values() for o in rec.outputs.values() if o.get("uri")}
    for d in stage_list(stages):
        if d["status"] != "completed":
            continue
        for name, out in d["outputs"].items():
            key = key_in_store(store, out.get("uri"))
            owner = next((m for m, pre in homes.items() if key and key.startswith(pre) and m in records), None)
            if owner and out["uri"] not in claimed:
                records[owner].outputs[f"{d['stage']}/{name}"] = {**out, "_stage": d["stage"]}
                claimed.add(out["uri"])
        artifact = (d.get("cost") or {}).get("artifact_uri")
        mid = (d.get("model") or {}).get("id")
        if artifact and artifact.startswith("s3://") and mid in records and not isinstance(store, LocalStore):
            records[mid].outputs.setdefault(f"{d['stage']}/artifact", {"path": None, "uri": artifact,
                                                                        "sha256": None, "_stage": d["stage"]})


def _deterministic_tarball(files: list[tuple[str, Path]], target: Path) -> Path:
    """gzip'd tar with fixed mtimes/owners and sorted members: same inputs → same sha256 (idempotent registration)."""
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path in sorted(files):
            info = tarfile.TarInfo(arcname)
            info.size, info.mtime, info.mode, info.uid, info.gid = path.stat().st_size, 0, 0o644, 0, 0
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return target


def publish_models(store: Store, layout: Layout, run_dir: str | Path, stages, *,
                   tarball: bool = False) -> dict[str, list[ObjectInfo]]:
    """Upload/copy every model file into the organized layout; tarball=True adds a model.tar.gz per model."""
    run_dir = Path(run_dir)
    records = model_records(stages)
    _attach_placed_outputs(store, layout, stages, records)
    published: dict[str, dict[str, ObjectInfo]] = {}  # model id → key → object (aliased outputs share a key)
    with tempfile.TemporaryDirectory(prefix="cardlib-publish-") as tmp:
        cache = Path(tmp)
        todo = [(mid, name, out) for mid, rec in records.items() for name, out in rec.outputs.items()]
        for mid, rec in records.items():
            if rec.version != layout_version(layout, mid):
                raise PublishError(f"model {mid!r} is {rec.version} in its stage but the store layout expects "
                                   f"{layout_version(layout, mid)}; publish with Layout.from_params of the same params")
            if not rec.outputs:
                raise PublishError(f"model {mid!r} (stages {rec.stages}) lists no files")
        for mid, name, out in tqdm(todo, desc="publish", unit="file", disable=None):
            for obj in _publish_output(store, run_dir, layout, mid, name, out, cache):
                published.setdefault(mid, {})[obj.key] = obj
        result = {mid: list(objs.values()) for mid, objs in published.items()}
        if tarball:
            for mid, objs in result.items():
                if any(o.key.endswith(".tar.gz") for o in objs):
                    continue
                objs_in = [o for o in objs if not o.key.startswith(layout.calibration + "/")]
                root = posixpath.commonpath([posixpath.dirname(o.key) for o in objs_in])
                members = [(posixpath.relpath(o.key, root), _local_copy(store, o, cache)) for o in objs_in]
                pack = _deterministic_tarball(members, cache / f"{mid}-{TARBALL}")
                home = destination(layout, mid, "model", TARBALL)
                objs.append(ensure_file(store, pack, f"{home}/{TARBALL}"))
    return result


def _local_copy(store: Store, obj: ObjectInfo, cache: Path) -> Path:
    if isinstance(store, LocalStore):
        return store.root / obj.key
    return store.get(obj.key, cache / "members" / obj.key)

"""The project manifest: a typed, validated description of published models, built only from stored objects."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cardlib.registry.publish import KINDS, model_records
from cardlib.store import Layout, ObjectInfo, Store, validate_id

SCHEMA_VERSION = 1
PROJECT = "pokemon-card-recognition"
ModelId = Literal["teacher", "student_stage1", "student_stage2", "hailo"]
_SHA256 = r"^[0-9a-f]{64}$"


class ManifestError(ValueError):
    """The manifest is missing, invalid, or would describe an object that is not in the store."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Strict):
    name: str = Field(min_length=1)
    uri: str
    key: str
    sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0)


class CostEntry(_Strict):
    stage: str
    backend: Literal["local", "sagemaker"]
    compute_seconds: float = Field(ge=0)
    billable_seconds: Optional[float] = Field(None, ge=0)
    usd: float = Field(ge=0)
    instance_type: Optional[str] = None
    job_name: Optional[str] = None
    artifact_uri: Optional[str] = None


class ModelEntry(_Strict):
    id: ModelId
    kind: Literal["dinov3-teacher", "efficientnet-student", "efficientnet-hailo"]
    version: str = Field(pattern=r"^v\d+(\.\d+)*$")
    parent: Optional[ModelId] = None
    stages: list[str] = Field(min_length=1)
    files: list[FileEntry] = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    mlflow_run_id: Optional[str] = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    cost: list[CostEntry] = Field(default_factory=list)
    cost_usd: float = Field(ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "ModelEntry":
        if KINDS[self.id] != self.kind:
            raise ValueError(f"model {self.id} must have kind {KINDS[self.id]!r}, not {self.kind!r}")
        if self.parent == self.id:
            raise ValueError(f"model {self.id} cannot be its own parent")
        for what in ("name", "key"):
            values = [getattr(f, what) for f in self.files]
            if len(set(values)) != len(values):
                raise ValueError(f"model {self.id}: duplicate file {what}s {sorted(values)}")
        if not math.isclose(self.cost_usd, sum(c.usd for c in self.cost), abs_tol=1e-6):
            raise ValueError(f"model {self.id}: cost_usd {self.cost_usd} is not the sum of its cost entries")
        return self


class ProjectManifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    project: str = PROJECT
    run_id: str
    git_commit: Optional[str] = Field(None, pattern=r"^[0-9a-f]{7,40}(-dirty)?$")
    created_at: datetime
    store_uri: str
    models: dict[ModelId, ModelEntry] = Field(min_length=1)
    total_cost_usd: float = Field(ge=0)

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str) -> str:
        return validate_id(v, "run id")

    @field_validator("created_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("created_at must carry a time zone")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ProjectManifest":
        root = self.store_uri.rstrip("/") + "/"
        for mid, entry in self.models.items():
            if entry.id != mid:
                raise ValueError(f"models.{mid} holds the entry of {entry.id}")
            if entry.parent is not None and entry.parent not in self.models:
                raise ValueError(f"models.{mid}: lineage parent {entry.parent!r} is not in the manifest")
            for f in entry.files:
                if f.uri != root + f.key:
                    raise ValueError(f"models.{mid}: file {f.name} uri {f.uri!r} is not {root + f.key!r}")
        for mid in self.models:
            seen, cur = set(), mid
            while cur is not None:
                if cur in seen:
                    raise ValueError(f"models.{mid}: lineage has a cycle through {cur!r}")
                seen.add(cur)
                cur = self.models[cur].parent
        if not math.isclose(self.total_cost_usd, sum(m.cost_usd for m in self.models.values()), abs_tol=1e-6):
            raise ValueError("total_cost_usd is not the sum of the models' cost_usd")
        return self

    def files(self) -> list[tuple[str, FileEntry]]:
        """(model id, file) for every object the manifest claims."""
        return [(mid, f) for mid, m in self.models.items() for f in m.files]

    def layout(self) -> Layout:
        """The store layout implied by the manifest's model versions (defaults for models it lacks)."""
        base, v = Layout(), {mid: m.version for mid, m in self.models.items()}
        return Layout(teacher_version=v.get("teacher", base.teacher_version),
                      stage1_version=v.get("student_stage1", base.stage1_version),
                      stage2_version=v.get("student_stage2", base.stage2_version),
                      hailo_version=v.get("hailo", base.hailo_version))


def _explain(err: ValidationError) -> str:
    lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()]
    return "project manifest violates its schema:\n  " + "\n  ".join(lines)


def parse_manifest(data: dict | str) -> ProjectManifest:
    """Validate a manifest given as a dict or JSON text; ManifestError names each violating field."""
    try:
        raw = json.loads(data) if isinstance(data, str) else data
        return ProjectManifest.model_validate(raw)
    except json.JSONDecodeError as e:
        raise ManifestError(f"project manifest is not JSON: {e}") from None
    except ValidationError as e:
        raise ManifestError(_explain(e)) from None


def _file_names(objs: list[ObjectInfo]) -> list[str]:
    names = [PurePosixPath(o.key).name for o in objs]
    if len(set(names)) == len(names):
        return names
    return [o.key.split("/", 1)[1] if o.key.startswith("models/") else o.key for o in objs]


def _check_in_store(store: Store, key: str, size: int, where: str) -> None:
    if not store.exists(key):
        raise ManifestError(f"{where}: {store.uri_for(key)} is not in the store; refusing to describe it")
    actual = store.size(key)
    if actual != size:
        raise ManifestError(f"{where}: {store.uri_for(key)} has {actual} bytes, {size} recorded")


def build_manifest(store: Store, published: dict[str, list[ObjectInfo]], stages, run_id: str,
                   git_commit: Optional[str], *, created_at: Optional[datetime] = None) -> ProjectManifest:
    """A manifest of the published models; every object is stat'ed in the store first (missing = error)."""
    records = model_records(stages)
    models = {}
    for mid, objs in published.items():
        if mid not in records:
            raise ManifestError(f"published model {mid!r} has no stage describing it")
        rec = records[mid]
        files = []
        for name, o in zip(_file_names(objs), objs):
            _check_in_store(store, o.key, o.size, f"model {mid}")
            files.append(FileEntry(name=name, uri=store.uri_for(o.key), key=o.key, sha256=o.sha256, size=o.size))
        costs = [CostEntry(**{k: c.get(k) for k in CostEntry.model_fields if k in c}) for c in rec.costs]
        models[mid] = dict(id=mid, kind=KINDS[mid], version=rec.version, parent=rec.parent, stages=rec.stages,
                           files=files, config=rec.config, mlflow_run_id=rec.mlflow_run_id, metrics=rec.metrics,
                           cost=costs, cost_usd=sum(c.usd for c in costs))
    return parse_manifest(dict(run_id=run_id, git_commit=git_commit, store_uri=store.uri.rstrip("/"),
                               created_at=created_at or datetime.now(timezone.utc), models=models,
                               total_cost_usd=sum(m["cost_usd"] for m in models.values())))


def write_manifest(store: Store, manifest: ProjectManifest, layout: Layout = Layout()) -> ObjectInfo:
    """Re-validate, check every claimed object is in the store with its recorded size, then write it."""
    manifest = parse_manifest(manifest.model_dump(mode="json"))
    if manifest.store_uri != store.uri.rstrip("/"):
        raise ManifestError(f"manifest describes store {manifest.store_uri!r}, not {store.uri!r}")
    for mid, f in manifest.files():
        _check_in_store(store, f.key, f.size, f"model {mid}")
    return store.put_text(manifest.model_dump_json(indent=2) + "\n", layout.manifest)


def read_manifest(store: Store, layout: Layout = Layout()) -> ProjectManifest:
    if not store.exists(layout.manifest):
        raise ManifestError(f"no project manifest at {store.uri_for(layout.manifest)}")
    return parse_manifest(store.get_text(layout.manifest))

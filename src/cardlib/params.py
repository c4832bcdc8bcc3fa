"""One typed params schema: YAML files (with `extends`), `--set a.b=value` overrides, loud errors."""
from __future__ import annotations

import copy
import re
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ParamsError(ValueError):
    """Bad params: the message names the key path and what is allowed."""


class _Section(BaseModel):
    # strict: "3" is not an int and "yes" is not a bool; unknown keys are refused
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class RunParams(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # goes into the run id
    seed: int = Field(0, ge=0)
    cell_timeout_s: int = Field(3600, ge=10, le=86400)  # per notebook cell; training cells are the long ones
    notebooks: list[str] = Field(default_factory=list)  # empty = every numbered notebook in notebooks/


class StoreParams(_Section):
    uri: str = "./store"  # local folder or s3://bucket/prefix
    region: Optional[str] = None  # S3 only; must match the bucket's region
    multipart_threshold_mb: int = Field(64, ge=5, le=5120)  # CopyObject refuses > 5 GB; stay well below
    multipart_chunksize_mb: int = Field(64, ge=5, le=5120)  # S3 minimum part size is 5 MiB
    max_concurrency: int = Field(8, ge=1, le=64)


class DataParams(_Section):
    source: Literal["synthetic", "scans"] = "synthetic"
    scans_dir: Optional[str] = None  # folder or s3:// prefix of <card_id>.<png|jpg|jpeg|webp>
    metadata_dir: Optional[str] = None  # pokemon-tcg-data layout: cards/en/<set>.json, sets/en.json
    n_cards: int = Field(240, ge=4, le=50000)  # synthetic catalogue size (incl. reprints and variants)
    n_sets: int = Field(6, ge=1, le=500)
    reprint_fraction: float = Field(0.1, ge=0.0, le=0.5)  # same artwork, another set/number
    variant_fraction: float = Field(0.1, ge=0.0, le=0.5)  # holo / reverse-holo of the same card
    novel_fraction: float = Field(0.2, ge=0.05, le=0.9)  # cards never seen in training
    photos_train: int = Field(6, ge=1, le=200)  # simulated photos per training card
    photos_val: int = Field(1, ge=1, le=50)
    photos_test: int = Field(2, ge=1, le=50)
    card_size: list[int] = Field(default_factory=lambda: [350, 250])  # rendered reference (H, W), 5:7
    photo_size: list[int] = Field(default_factory=lambda: [480, 640])  # simulated photo (H, W), 4:3
    input_size: list[int] = Field(default_factory=lambda: [160, 112])  # model input (H, W): the preprocessing contract
    crops: Literal["find_card", "simulated"] = "find_card"  # how training/eval crops are made
    difficulty: float = Field(1.0, ge=0.0, le=2.0)  # camera simulator strength
    num_workers: int = Field(0, ge=0, le=32)

    @field_validator("card_size", "photo_size", "input_size")
    @classmethod
    def _hw(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or min(v) < 16:
            raise ValueError("must be [height, width], each >= 16")
        return v

    @model_validator(mode="after")
    def _scans_need_dir(self) -> "DataParams":
        if self.source == "scans" and not self.scans_dir:
            raise ValueError("data.scans_dir is required when data.source is 'scans'")
        return self


class TeacherParams(_Section):
    preset: Literal["dinov3-tiny", "dinov3-small", "dinov3-vits16", "dinov3-vitb16", "dinov3-vitl16"] = "dinov3-tiny"
    weights_dir: Optional[str] = None  # HF-format dir, local or s3://; None = random init
    embed_dim: int = Field(256, ge=8, le=4096)  # the seed used 768 with ViT-L/16
    pool: Literal["cls", "cls+mean"] = "cls+mean"
    loss: Literal["infonce", "subcenter_arcface"] = "infonce"
    temperature: float = Field(0.07, gt=0.0, le=1.0)
    epochs: int = Field(8, ge=1, le=1000)
    batch_size: int = Field(64, ge=2, le=4096)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.05, ge=0.0, le=1.0)
    warmup_frac: float = Field(0.1, ge=0.0, le=0.5)
    grad_accum: int = Field(1, ge=1, le=256)
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)  # < 1 for pretrained backbones
    freeze_blocks: int = Field(0, ge=0, le=48)
    bf16: bool = False  # autocast where the device supports it
    eval_every: int = Field(1, ge=1, le=1000)  # epochs between validations; the last one always
    version: str = Field("v1.0", pattern=r"^v\d+(\.\d+)*$")


class StageParams(_Section):
    epochs: int = Field(6, ge=1, le=1000)
    batch_size: int = Field(64, ge=2, le=4096)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    warmup_frac: float = Field(0.1, ge=0.0, le=0.5)
    w_feature: float = Field(1.0, ge=0.0)  # cosine to the teacher embedding
    w_distance: float = Field(1.0, ge=0.0)  # RKD distance term (Park et al. 2019)
    w_angle: float = Field(2.0, ge=0.0)  # RKD angle term
    w_metric: float = Field(0.0, ge=0.0)  # identity loss (stage 2)
    hard_negatives: bool = False  # batch reprints/variants together (stage 2)
    difficulty: float = Field(1.0, ge=0.0, le=2.0)
    eval_every: int = Field(1, ge=1, le=1000)  # epochs between validations; the last one always
    version: str = Field("v1.0", pattern=r"^v\d+(\.\d+)*$")


def _stage2_defaults() -> "StageParams":
    return StageParams(epochs=4, lr=5e-4, w_metric=1.0, hard_negatives=True, difficulty=1.3, version="v2.0")


class DistillParams(_Section):
    student_weights: Optional[str] = None  # local or s3:// safetensors; None = random init
    channels_last: bool = True
    stage1: StageParams = Field(default_factory=StageParams)
    stage2: StageParams = Field(default_factory=_stage2_defaults)


class ExportParams(_Section):
    opset: int = Field(13, ge=11, le=17)  # Hailo's DFC takes 13
    export_teacher: bool = False
    teacher_opset: int = Field(17, ge=14, le=17)  # ViT attention needs >= 14; the teacher never goes to Hailo
    parity_max_abs: float = Field(1e-3, gt=0.0)
    parity_min_cos: float = Field(0.9999, gt=0.0, le=1.0)
    simplify: bool = True


class HailoParams(_Section):
    hw_arch: Literal["hailo8", "hailo8l"] = "hailo8"  # a HEF for one does not run on the other
    calib_size: int = Field(1024, ge=8, le=100000)
    optimization_level: int = Field(2, ge=0, le=4)
    compression_level: int = Field(0, ge=0, le=5)
    version: str = Field("v2.1", pattern=r"^v\d+(\.\d+)*$")


class GateParams(_Section):
    retention_min: float = Field(0.97, ge=0.0, le=2.0)
    int8_drop_max: float = Field(0.01, ge=0.0, le=1.0)  # top-1 drop, as a fraction
    parity_required: bool = True


class EvalParams(_Section):
    top_k: int = Field(5, ge=1, le=100)
    shortlist_k: int = Field(20, ge=1, le=1000)  # candidates per signal that the fusion re-ranks
    unknown_target_precision: float = Field(0.9, gt=0.0, le=1.0)  # the open-set threshold is fitted to this
    gallery_sizes: list[int] = Field(default_factory=lambda: [250, 1000, 4000])
    failure_examples: int = Field(12, ge=0, le=200)
    gates: GateParams = Field(default_factory=GateParams)


class RegistryParams(_Section):
    backend: Literal["mlflow", "sagemaker"] = "mlflow"
    model_package_group: str = Field("pokemon-card-recognition-models", pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
    inference_image_framework: str = "pytorch"
    inference_image_version: str = "2.5"


class TrackingParams(_Section):
    uri: Optional[str] = None  # None = sqlite file beside a local store
    experiment_prefix: str = ""


class ComputeParams(_Section):
    backend: Literal["local", "sagemaker"] = "local"
    nproc: int = Field(1, ge=1, le=64)  # >1 = torchrun DDP
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(0, ge=0, le=256)  # 0 = torch default
    instance_type: str = "ml.g5.2xlarge"
    instance_count: int = Field(1, ge=1, le=64)
    max_run_s: int = Field(86400, ge=60)
    role_arn: Optional[str] = None
    price_per_hour: dict[str, float] = Field(default_factory=dict)  # USD per instance-hour


class Params(_Section):
    run: RunParams = Field(default_factory=RunParams)
    store: StoreParams = Field(default_factory=StoreParams)
    data: DataParams = Field(default_factory=DataParams)
    teacher: TeacherParams = Field(default_factory=TeacherParams)
    distill: DistillParams = Field(default_factory=DistillParams)
    export: ExportParams = Field(default_factory=ExportParams)
    hailo: HailoParams = Field(default_factory=HailoParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    registry: RegistryParams = Field(default_factory=RegistryParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    compute: ComputeParams = Field(default_factory=ComputeParams)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self, *sections: str) -> str:
        """sha256 of the named sections (all when none): part of a stage's inputs hash."""
        d = self.to_dict()
        part = {k: d[k] for k in sections} if sections else d
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- loading

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 2e-4 as a float (YAML 1.1 wants 2.0e-4)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ParamsError(f"extends: cycle through {path.name}")
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = _yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path.name}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path.name}: top level must be a mapping of sections")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ParamsError(f"{path.name}: 'extends' must be a file name")
    return _merge(_read_yaml(path.parent / parent, seen + (path,)), raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], value); the value is read as YAML so 3 is an int and true a bool."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {text!r}: expected key.path=value")
    try:
        parsed = _yaml(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ParamsError(f"--set {text!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Params
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(e["loc"])
            msg = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif "input" in e and e["type"] not in ("missing",):
            msg += f" (got {e['input']!r})"
        lines.append(f"{key}: {msg}")
    return "invalid params:\n  " + "\n  ".join(lines)


def validate(raw: dict) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_explain(e)) from None


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Read a params file (following `extends`), apply `--set` overrides, validate."""
    raw = _read_yaml(Path(path)) if path else {}
    return validate(apply_overrides(raw, overrides or []))


LOCAL_PATH_KEYS = (("store", "uri"), ("data", "scans_dir"), ("data", "metadata_dir"), ("teacher", "weights_dir"),
                   ("distill", "student_weights"))


def resolve_paths(params: Params, base: str | Path) -> Params:
    """Relative local paths in params are relative to the project root (where `cardlib run` starts); notebooks
    run with cwd=notebooks/, so the runner makes them absolute before any stage sees them."""
    d = params.to_dict()
    for section, key in LOCAL_PATH_KEYS:
        value = d[section][key]
        if value and "://" not in value and not Path(value).expanduser().is_absolute():
            d[section][key] = str((Path(base) / value).resolve())
    return validate(d)


def from_dict(d: dict) -> Params:
    return validate(d)

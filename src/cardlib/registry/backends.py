"""Model registries: MLflow (embedded default) and SageMaker Model Registry; one version per distinct sha256."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from cardlib.registry.publish import model_records
from cardlib.store import (ObjectInfo, Store, StoreError, cache_dir as store_cache_dir, materialize, sha256_file,
                           validate_id)

NAMES = {"teacher": "cardlib-teacher", "student_stage1": "cardlib-student-stage1",
         "student_stage2": "cardlib-student-stage2", "hailo": "cardlib-hailo"}
TAG = "cardlib."  # prefix of our tags / customer metadata keys
_ECR = re.compile(r"^\d{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/")


class RegistryError(RuntimeError):
    """A registry operation that cannot go ahead; the message says why."""


class RegistryRegionError(RegistryError):
    """Bucket, SageMaker client and inference image are not all in one region."""


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegisteredVersion:
    backend: str
    name: str  # registered model name or model package group
    version: str
    model_id: Optional[str]
    uri: str  # the object the version points at
    sha256: Optional[str]
    status: str  # MLflow aliases ("champion", …) or SageMaker approval status
    created: bool = False  # made by this call (False: an identical version was already registered)
    arn: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


# which release gates (cardlib.evaluate.gates: retention, int8_drop, onnx_parity) judge which model: retention
# judges the distilled lineage, so the teacher and stage 1 ride on it; what ships adds parity (and INT8 drop)
GATES_FOR = {"teacher": ("retention",), "student_stage1": ("retention",),
             "student_stage2": ("retention", "onnx_parity"), "hailo": ("retention", "onnx_parity", "int8_drop")}


def gate_decisions(gate_table: Mapping[str, Mapping]) -> dict[str, GateDecision]:
    """Per-model pass/fail from the evaluation's gate table ({gate: {"value", "threshold", "pass"}});
    a gate missing from the table fails."""
    out = {}
    for mid, names in GATES_FOR.items():
        reasons = []
        for g in names:
            row = gate_table.get(g)
            if row is None:
                reasons.append(f"{g}: not evaluated")
            elif not row.get("pass"):
                reasons.append(f"{g}: {row.get('value')} vs threshold {row.get('threshold')}")
        out[mid] = GateDecision(not reasons, tuple(reasons))
    return out


class ModelRegistry:
    """What both backends share: pick the object to register, register every published model, list versions."""

    backend = "base"
    prefer: tuple[str, ...] = ()  # file suffixes, best first

    def primary_object(self, model_id: str, objs: list[ObjectInfo]) -> ObjectInfo:
        for suffix in self.prefer:
            for o in objs:
                if o.key.endswith(suffix) and "/calibration/" not in o.key:
                    return o
        raise RegistryError(f"{self.backend}: model {model_id!r} has no {' / '.join(self.prefer)} object among "
                            f"{[o.key for o in objs]}")

    def register(self, model_id: str, obj: ObjectInfo, *, version: str, parent: Optional[str], passed: bool,
                 run_id: Optional[str] = None, description: str = "") -> RegisteredVersion:
        raise NotImplementedError

    def versions(self) -> list[RegisteredVersion]:
        raise NotImplementedError

    def register_all(self, published: dict[str, list[ObjectInfo]], stages, passed: Mapping[str, bool],
                     run_id: Optional[str] = None) -> list[RegisteredVersion]:
        """One version per published model; passed[model id] says whether its evaluation gates passed."""
        records = model_records(stages)
        out = []
        for mid, objs in published.items():
            if mid not in passed:
                raise RegistryError(f"no gate decision for {mid!r}; pass passed={{'{mid}': True|False, …}}")
            rec = records[mid]
            out.append(self.register(mid, self.primary_object(mid, objs), version=rec.version, parent=rec.parent,
                                     passed=bool(passed[mid]), run_id=run_id,
                                     description=f"{mid} {rec.version} from {', '.join(rec.stages)}"))
        return out

    @staticmethod
    def _tags(model_id: str, obj: ObjectInfo, version: str, parent: Optional[str], passed: bool,
              run_id: Optional[str]) -> dict[str, str]:
        return {f"{TAG}model_id": model_id, f"{TAG}version": version, f"{TAG}parent": parent or "none",
                f"{TAG}sha256": obj.sha256, f"{TAG}size": str(obj.size), f"{TAG}key": obj.key,
                f"{TAG}gates": "passed" if passed else "failed", f"{TAG}run_id": run_id or "unknown"}


# ---------------------------------------------------------------- MLflow

class OnnxEmbedder:
    """A registered ONNX embedding model: float NCHW or RGB uint8 crops → L2-normalised embeddings."""

    def __init__(self, path: str | Path, name: str = "", version: str = ""):
        from cardlib.export import onnx_metadata, ort_session
        from cardlib.preprocess import Preprocess

        self.path, self.name, self.version = Path(path), name, version
        self.session = ort_session(self.path)
        meta = onnx_metadata(self.session)
        if "preprocess" in meta:
            self.preprocess = Preprocess.from_dict(json.loads(meta["preprocess"]))
        else:  # a graph not exported by cardlib: take the input size from its static shape
            shape = self.session.get_inputs()[0].shape
            h, w = (shape[2], shape[3]) if all(isinstance(s, int) for s in shape[2:4]) else (160, 112)
            self.preprocess = Preprocess(height=h, width=w)

    def embed(self, nchw_float: np.ndarray) -> np.ndarray:
        from cardlib.export import onnx_embed

        return onnx_embed(self.session, nchw_float)

    def embed_images(self, images) -> np.ndarray:
        return self.embed(self.preprocess.batch(images).numpy())


class MlflowRegistry(ModelRegistry):
    """A registered model per model id, a version per distinct sha256, alias champion/challenger from the gates."""

    backend = "mlflow"
    prefer = (".onnx", ".tar.gz", ".hef", ".safetensors", ".pt", "")

    def __init__(self, tracking_uri: str, store: Optional[Store] = None):
        from mlflow import MlflowClient

        self.tracking_uri, self.store = tracking_uri, store
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def _ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(name, description="cardlib model (see the project manifest)")

    def register(self, model_id, obj, *, version, parent, passed, run_id=None, description=""):
        name = NAMES[model_id]
        self._ensure_model(name)
        same = self.client.search_model_versions(f"name='{name}' and tag.`{TAG}sha256`='{obj.sha256}'")
        if same:
            mv, created = min(same, key=lambda v: int(v.version)), False
        else:
            tags = self._tags(model_id, obj, version, parent, passed, run_id)
            mv, created = self.client.create_model_version(name, obj.uri, tags=tags, description=description), True
        alias = "champion" if passed else "challenger"
        self.client.set_registered_model_alias(name, alias, mv.version)
        aliases = sorted(set(self.client.get_model_version(name, mv.version).aliases))
        return RegisteredVersion("mlflow", name, str(mv.version), model_id, mv.source, obj.sha256,
                                 ",".join(aliases), created)

    def versions(self) -> list[RegisteredVersion]:
        from mlflow.exceptions import MlflowException

        out = []
        for mid, name in NAMES.items():
            try:  # search results omit aliases; the registered model carries alias → version
                aliases = self.client.get_registered_model(name).aliases
            except MlflowException:
                continue
            for mv in self.client.search_model_versions(f"name='{name}'"):
                status = ",".join(sorted(a for a, v in aliases.items() if str(v) == str(mv.version)))
                out.append(RegisteredVersion("mlflow", name, str(mv.version), mv.tags.get(f"{TAG}model_id", mid),
                                             mv.source, mv.tags.get(f"{TAG}sha256"), status))
        return sorted(out, key=lambda v: (v.name, int(v.version)))

    def load_by_alias(self, name: str, alias: str = "champion", cache_dir: str | Path | None = None) -> OnnxEmbedder:
        """The version behind an alias as an embedder; its bytes are checked against the registered sha256."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as e:
            raise RegistryError(f"{name}@{alias}: not registered ({e.error_code})") from None
        # a local version is read where it is; a remote one is downloaded once per name and version
        cache = Path(cache_dir) if cache_dir else store_cache_dir("models", validate_id(name, "model name"),
                                                                   validate_id(str(mv.version), "model version"))
        try:
            path = materialize(mv.source[7:] if mv.source.startswith("file://") else mv.source, cache)
        except StoreError as e:
            raise RegistryError(f"{name}@{alias} (version {mv.version}) points at a missing object: {e}") from None
        recorded = mv.tags.get(f"{TAG}sha256")
        if recorded and sha256_file(path) != recorded:
            raise RegistryError(f"{name}@{alias}: {mv.source} does not have the registered sha256 {recorded[:12]}…")
        if path.suffix != ".onnx":
            raise RegistryError(f"{name}@{alias} is {path.name}; only ONNX versions load on the host")
        return OnnxEmbedder(path, name, str(mv.version))


# ---------------------------------------------------------------- SageMaker

def ecr_region(image_uri: str) -> str:
    m = _ECR.match(image_uri)
    if not m:
        raise RegistryError(f"{image_uri!r} is not an ECR image URI (<account>.dkr.ecr.<region>.amazonaws.com/…)")
    return m.group(1)


def resolve_image_uri(framework: str, version: str, region: str, instance_type: str = "ml.m5.xlarge") -> str:
    """The SageMaker SDK's inference image for this region (newest Python it offers for that version)."""
    from sagemaker.core import image_uris

    py = image_uris.list_py_versions(framework, version, image_scope="inference")
    return image_uris.retrieve(framework=framework, region=region, version=version, instance_type=instance_type,
                               py_version=sorted(py, key=lambda p: int(p[2:] or 0))[-1] if py else None,
                               image_scope="inference")


def check_regions(bucket: str, client: str, image: str) -> None:
    """All three regions must agree; raised before any SageMaker call is made."""
    if len({bucket, client, image}) != 1:
        raise RegistryRegionError(
            f"regions disagree: store bucket in {bucket}, SageMaker client in {client}, inference image in {image}; "
            f"use one region for all three (set store.region to the bucket's region and let cardlib resolve the image)")


def _missing(err) -> bool:
    e = err.response.get("Error", {})
    return e.get("Code") in ("ResourceNotFound", "ValidationException") and "not exist" in e.get("Message", "")


@dataclass
class SageMakerRegistry(ModelRegistry):
    """Model package group with one package per model version; the image is resolved for the bucket's region."""

    store: Store
    group: str = "pokemon-card-recognition-models"
    framework: str = "pytorch"
    framework_version: str = "2.5"
    image_uri: Optional[str] = None
    instance_type: str = "ml.m5.xlarge"
    client: object = None
    region: str = field(init=False)

    backend = "sagemaker"
    prefer = (".tar.gz",)

    def __post_init__(self):
        import boto3

        from cardlib.store_s3 import S3Store, bucket_region

        if not isinstance(self.store, S3Store):
            raise RegistryError("the SageMaker registry needs an s3:// store (ModelDataUrl must be an S3 object)")
        self.client = self.client or boto3.client("sagemaker", region_name=self.store.region)
        self.region = self.client.meta.region_name
        self.image_uri = self.image_uri or resolve_image_uri(self.framework, self.framework_version, self.region,
                                                             self.instance_type)
        check_regions(bucket_region(self.store.client, self.store.bucket), self.region, ecr_region(self.image_uri))

    def _ensure_group(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.describe_model_package_group(ModelPackageGroupName=self.group)
        except ClientError as e:
            if not _missing(e):
                raise
            self.client.create_model_package_group(ModelPackageGroupName=self.group,
                                                   ModelPackageGroupDescription="cardlib models (see the manifest)")

    def _packages(self) -> list[dict]:
        from botocore.exceptions import ClientError

        try:
            pages = self.client.get_paginator("list_model_packages").paginate(ModelPackageGroupName=self.group)
            arns = [s["ModelPackageArn"] for p in pages for s in p["ModelPackageSummaryList"]]
        except ClientError as e:
            if _missing(e):  # no group yet: nothing registered
                return []
            raise
        return [self.client.describe_model_package(ModelPackageName=a) for a in arns]

    def register(self, model_id, obj, *, version, parent, passed, run_id=None, description=""):
        if not obj.uri.startswith(self.store.uri.rstrip("/") + "/"):
            raise RegistryError(f"{obj.uri} is not in the organized store {self.store.uri}")
        self._ensure_group()
        for pkg in self._packages():
            meta = pkg.get("CustomerMetadataProperties", {})
            if meta.get(f"{TAG}sha256") == obj.sha256 and meta.get(f"{TAG}model_id") == model_id:
                return self._version(pkg, created=False)
        status = "Approved" if passed else "PendingManualApproval"
        resp = self.client.create_model_package(
            ModelPackageGroupName=self.group, ModelPackageDescription=description[:1000],
            InferenceSpecification={"Containers": [{"Image": self.image_uri, "ModelDataUrl": obj.uri}],
                                    "SupportedContentTypes": ["application/x-npy", "image/jpeg", "image/png"],
                                    "SupportedResponseMIMETypes": ["application/json", "application/x-npy"]},
            ModelApprovalStatus=status,
            CustomerMetadataProperties=self._tags(model_id, obj, version, parent, passed, run_id))
        return self._version(self.client.describe_model_package(ModelPackageName=resp["ModelPackageArn"]), True)

    def _version(self, pkg: dict, created: bool) -> RegisteredVersion:
        meta = pkg.get("CustomerMetadataProperties", {})
        container = pkg.get("InferenceSpecification", {}).get("Containers", [{}])[0]
        return RegisteredVersion("sagemaker", self.group, str(pkg.get("ModelPackageVersion")),
                                 meta.get(f"{TAG}model_id"), container.get("ModelDataUrl", ""),
                                 meta.get(f"{TAG}sha256"), pkg.get("ModelApprovalStatus", ""), created,
                                 pkg["ModelPackageArn"])

    def versions(self) -> list[RegisteredVersion]:
        return sorted((self._version(p, False) for p in self._packages()), key=lambda v: int(v.version))


def registry_from_params(params, store: Store) -> ModelRegistry:
    """The registry params.registry.backend names, wired to this store (and its tracking URI for MLflow)."""
    r = params.registry
    if r.backend == "sagemaker":
        return SageMakerRegistry(store, r.model_package_group, r.inference_image_framework, r.inference_image_version)
    from cardlib import tracking

    return MlflowRegistry(tracking.configure(params, store), store)

"""A training task as a SageMaker training job: inputs through the store, ModelTrainer + Torchrun, cost, artifacts.

The steps are separate (`build_request` → `submit` → `wait_for` → `describe` → `collect`) so each can be run and
tested on its own; `launch` chains them. Regions are checked before any upload or job call: the training image
is resolved for the session's region and the ECR URI's region must equal the session's and the bucket's.
"""
from __future__ import annotations

import logging
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

import cardlib
from cardlib.params import apply_overrides, parse_override, validate
from cardlib.store import StoreError, validate_id
from cardlib.train.backends import TaskOutcome, read_outcome
from cardlib.train.entry import PARAMS_FILE
from cardlib.train.tasks import TASKS

log = logging.getLogger(__name__)

IMAGE_FRAMEWORK = "pytorch"
IMAGE_VERSION = "2.8"  # newest PyTorch training image of the SDK's table with py3.12; cardlib needs torch >= 2.6
IMAGE_PY = "py312"
# installed into the training image by SageMaker (pip); torch/torchvision come with the image, never reinstalled
TRAINING_REQUIREMENTS = ("numpy", "pillow", "pyyaml", "pydantic", "tqdm", "opencv-python-headless", "safetensors",
                         "timm", "transformers", "boto3")
IMAGE_PROVIDED = ("torch", "torchvision")
LAUNCHER = "cardlib_train.py"
LAUNCHER_SOURCE = '''"""SageMaker entry script: `python -m cardlib.train.entry` with the job's hyperparameters."""
import runpy

runpy.run_module("cardlib.train.entry", run_name="__main__", alter_sys=True)
'''
# the data dir minus what training never reads (whole photos; a scans download cache)
SKIP_DATA = ("photos", "scans-cache")
_ECR = re.compile(r"^\d{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/")


class SageMakerJobError(RuntimeError):
    """A SageMaker training job cannot be set up, run or collected; the message says why."""


def training_prefix(run_id: str) -> str:
    return f"pipelines/training/{validate_id(run_id, 'run id')}"


def ecr_region(image_uri: str) -> str:
    """The region of an ECR image URI (`<account>.dkr.ecr.<region>.amazonaws.com/...`)."""
    m = _ECR.match(image_uri)
    if not m:
        raise SageMakerJobError(f"not an ECR image URI: {image_uri!r}")
    return m.group(1)


def training_image_uri(region: str, instance_type: str, version: str = IMAGE_VERSION) -> str:
    """The SageMaker PyTorch training image for this region and instance type (CPU or GPU build)."""
    from sagemaker.core import image_uris

    try:
        return image_uris.retrieve(framework=IMAGE_FRAMEWORK, region=region, version=version, py_version=IMAGE_PY,
                                   instance_type=instance_type, image_scope="training")
    except ValueError as e:
        raise SageMakerJobError(f"no PyTorch {version} training image for region {region} / {instance_type}: "
                                f"{e}") from None


def check_regions(image_uri: str, session_region: Optional[str], store) -> str:
    """The one region of a job: the image's, the session's and the bucket's must agree (the seed's ECR failure)."""
    from cardlib.store_s3 import bucket_region

    image_region = ecr_region(image_uri)
    bucket = bucket_region(store.client, store.bucket)
    regions = {"training image": image_region, "SageMaker session": session_region, "store bucket": bucket,
               "store client": store.region}
    if len(set(regions.values())) != 1:
        found = ", ".join(f"{k} {v}" for k, v in regions.items())
        raise SageMakerJobError(f"region mismatch: {found}. Run the job in the bucket's region {bucket}: set "
                                f"AWS_DEFAULT_REGION={bucket} (or pass a boto3 session for {bucket}) and "
                                f"store.region: {bucket}")
    return image_region


def instance_price(params) -> float:
    c = params.compute
    if c.instance_type not in c.price_per_hour:
        known = ", ".join(sorted(c.price_per_hour)) or "none"
        raise SageMakerJobError(f"compute.price_per_hour has no price for {c.instance_type} (priced: {known}); "
                                f"add it so that the job's cost can be recorded")
    return float(c.price_per_hour[c.instance_type])


def job_cost(description: dict, price_per_hour: dict) -> dict:
    """Cost record from a DescribeTrainingJob response: billable seconds × instances × hourly price / 3600."""
    rc = description["ResourceConfig"]
    instance_type, count = rc["InstanceType"], int(rc.get("InstanceCount", 1))
    if instance_type not in price_per_hour:
        raise SageMakerJobError(f"no price for {instance_type} in compute.price_per_hour")
    start, end = description.get("TrainingStartTime"), description.get("TrainingEndTime")
    if "BillableTimeInSeconds" in description:
        per_instance, source = float(description["BillableTimeInSeconds"]), "BillableTimeInSeconds"
    elif start is not None and end is not None:
        # SageMaker bills the interval TrainingStartTime..TrainingEndTime; used when the field is not reported
        per_instance, source = (end - start).total_seconds(), "TrainingEndTime-TrainingStartTime"
    else:
        raise SageMakerJobError(f"job {description['TrainingJobName']} reports no billable time "
                                f"(status {description.get('TrainingJobStatus')})")
    training = description.get("TrainingTimeInSeconds")
    if training is None:
        training = (end - start).total_seconds() if start is not None and end is not None else per_instance
    billable = per_instance * count  # the API reports wall-clock time per instance
    return {"backend": "sagemaker", "compute_seconds": float(training) * count, "billable_seconds": billable,
            "usd": round(billable * float(price_per_hour[instance_type]) / 3600.0, 6),
            "instance_type": instance_type, "instance_count": count, "billable_source": source,
            "job_name": description["TrainingJobName"],
            "artifact_uri": description.get("ModelArtifacts", {}).get("S3ModelArtifacts")}


# ---------------------------------------------------------------- inputs

def requirements_txt() -> str:
    """The training requirements with cardlib's own version constraints where it declares them."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    declared = {}
    try:
        for text in metadata.requires("cardlib") or []:
            req = Requirement(text)
            if not req.marker:
                declared[canonicalize_name(req.name)] = str(req)
    except metadata.PackageNotFoundError:  # running from a source tree without metadata: plain names
        pass
    return "\n".join(declared.get(canonicalize_name(n), n) for n in TRAINING_REQUIREMENTS) + "\n"


def stage_source(dest: str | Path) -> Path:
    """A small source dir for the job: the cardlib package (no caches), the launcher, requirements.txt."""
    dest = Path(dest)
    package = Path(cardlib.__file__).resolve().parent
    shutil.copytree(package, dest / "cardlib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".DS_Store"))
    (dest / LAUNCHER).write_text(LAUNCHER_SOURCE)
    (dest / "requirements.txt").write_text(requirements_txt())
    return dest


def _put_tree(store, local: Path, prefix: str, skip: Sequence[str] = ()) -> int:
    n = 0
    for p in sorted(local.rglob("*")):
        rel = p.relative_to(local)
        if p.is_file() and rel.parts[0] not in skip and not any(part.startswith(".") for part in rel.parts):
            store.put(p, f"{prefix}/{rel.as_posix()}")
            n += 1
    if n == 0:
        raise SageMakerJobError(f"nothing to upload from {local}")
    return n


def upload_inputs(store, run_id: str, task: str, params, data_root, teacher_dir=None, stage1_dir=None) -> dict:
    """Upload the task's inputs as channel folders; returns {channel: s3 uri}."""
    import yaml

    base = f"{training_prefix(run_id)}/inputs/{task}"
    sources = {"data": data_root, "teacher": teacher_dir, "stage1": stage1_dir}
    channels = {}
    for name, local in sources.items():
        if local is None:
            continue
        _put_tree(store, Path(local), f"{base}/{name}", SKIP_DATA if name == "data" else ())
        channels[name] = store.uri_for(f"{base}/{name}") + "/"
    store.put_text(yaml.safe_dump(params.to_dict(), sort_keys=False), f"{base}/params/{PARAMS_FILE}")
    channels["params"] = store.uri_for(f"{base}/params") + "/"
    return channels


# ---------------------------------------------------------------- the job

@dataclass
class JobRequest:
    """A training job ready to submit: the configured ModelTrainer and the channels it reads."""

    trainer: object  # sagemaker.train.ModelTrainer
    channels: dict
    image_uri: str
    region: str
    output_path: str
    hyperparameters: dict
    boto_session: object
    _source: Optional[tempfile.TemporaryDirectory] = field(default=None, repr=False)

    def input_data(self) -> list:
        from sagemaker.core.training.configs import InputData

        return [InputData(channel_name=name, data_source=uri) for name, uri in self.channels.items()]


def _needs(task: str, teacher_dir, stage1_dir) -> None:
    if task not in TASKS:
        raise SageMakerJobError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if task in ("stage1", "stage2") and teacher_dir is None:
        raise SageMakerJobError(f"task {task} needs teacher_dir")
    if task == "stage2" and stage1_dir is None:
        raise SageMakerJobError("task stage2 needs stage1_dir")


def build_request(task: str, params, data_root, teacher_dir=None, stage1_dir=None, run_id: str = "", store=None,
                  boto_session=None, overrides: Sequence[str] = ()) -> JobRequest:
    """Check regions/price/inputs, upload the inputs, stage the source and configure a ModelTrainer."""
    import boto3

    from cardlib.store_s3 import S3Store

    _needs(task, teacher_dir, stage1_dir)
    if not isinstance(store, S3Store):
        raise SageMakerJobError("the sagemaker backend needs an s3:// store (store.uri); "
                                f"got {getattr(store, 'uri', store)!r}")
    if not run_id:
        raise SageMakerJobError("run_id is required for the sagemaker backend: it names the job's S3 prefix")
    prefix = training_prefix(run_id)
    hps = {"task": task}
    for text in overrides:
        path, _ = parse_override(text)
        hps[".".join(path)] = text.partition("=")[2]
    validate(apply_overrides(params.to_dict(), list(overrides)))  # a bad override fails now, not in the job
    session = boto_session or boto3.session.Session()
    if not session.region_name:
        raise SageMakerJobError("the boto3 session has no region; set AWS_DEFAULT_REGION to the bucket's region")
    image = training_image_uri(session.region_name, params.compute.instance_type)
    region = check_regions(image, session.region_name, store)
    instance_price(params)
    for name, value in (("data_root", data_root), ("teacher_dir", teacher_dir), ("stage1_dir", stage1_dir)):
        if value is not None and not Path(value).is_dir():
            raise SageMakerJobError(f"{name} {value!r} is not a directory")

    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.training.configs import Compute, OutputDataConfig, SourceCode, StoppingCondition
    from sagemaker.train.distributed import Torchrun
    from sagemaker.train.model_trainer import ModelTrainer

    channels = upload_inputs(store, run_id, task, params, data_root, teacher_dir, stage1_dir)
    source = tempfile.TemporaryDirectory(prefix="cardlib-source-")
    stage_source(source.name)
    c = params.compute
    output_path = store.uri_for(f"{prefix}/jobs") + "/"
    sm_session = Session(boto_session=session, default_bucket=store.bucket, default_bucket_prefix=store.prefix or None)
    trainer = ModelTrainer(
        sagemaker_session=sm_session,
        role=c.role_arn,
        base_job_name=f"cardlib-{task}",
        input_s3_key_prefix=f"{prefix}/jobs",  # the SDK's code and driver channels sit beside the job's outputs
        training_image=image,
        source_code=SourceCode(source_dir=source.name, entry_script=LAUNCHER, requirements="requirements.txt"),
        distributed=Torchrun(process_count_per_node=c.nproc if c.nproc > 1 else None),  # None: one per GPU
        compute=Compute(instance_type=c.instance_type, instance_count=c.instance_count),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=c.max_run_s),
        output_data_config=OutputDataConfig(s3_output_path=output_path, compression_type="GZIP"),
        hyperparameters=hps,
        environment={"PYTHONUNBUFFERED": "1"},
    )
    return JobRequest(trainer, channels, image, region, output_path, hps, session, source)


def submit(request: JobRequest) -> str:
    """CreateTrainingJob (no waiting); returns the job name."""
    try:
        request.trainer.train(input_data_config=request.input_data(), wait=False, logs=False)
    finally:
        if request._source is not None:
            request._source.cleanup()
    job = request.trainer._latest_training_job
    if job is None:
        raise SageMakerJobError("ModelTrainer.train returned without creating a training job")
    log.info("submitted SageMaker training job %s (%s, %s)", job.training_job_name, request.image_uri,
             request.region)
    return job.training_job_name


def wait_for(job_name: str, boto_session, logs: bool = True, poll: int = 30) -> None:
    """Wait for a terminal status, showing the status (and the container logs when logs=True)."""
    from sagemaker.core.resources import TrainingJob

    job = TrainingJob.get(training_job_name=job_name, session=boto_session, region=boto_session.region_name)
    try:
        job.wait(poll=poll, logs=logs)
    except Exception as e:
        raise SageMakerJobError(f"training job {job_name} did not complete: {e}") from None


def describe(job_name: str, boto_session) -> dict:
    return boto_session.client("sagemaker").describe_training_job(TrainingJobName=job_name)


def collect(description: dict, out_dir, store, price_per_hour: dict) -> TaskOutcome:
    """Download and unpack the job's model.tar.gz into out_dir; history, metrics and cost as a TaskOutcome."""
    status = description.get("TrainingJobStatus")
    if status != "Completed":
        raise SageMakerJobError(f"job {description['TrainingJobName']} is {status}: "
                                f"{description.get('FailureReason', 'no failure reason reported')}")
    cost = job_cost(description, price_per_hour)
    uri = cost["artifact_uri"]
    if not uri:
        raise SageMakerJobError(f"job {cost['job_name']} reports no model artifact")
    try:
        key = store.key_for(uri)
    except StoreError:
        raise SageMakerJobError(f"the job's artifact {uri} is outside the store {store.uri}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cardlib-artifact-") as tmp:
        archive = store.get(key, Path(tmp) / "model.tar.gz")
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(out, filter="data")  # refuses absolute paths, '..' and links out of out_dir
    return read_outcome(out, cost)


def launch(task: str, params, data_root, out_dir, teacher_dir=None, stage1_dir=None, run_id: str = "", store=None,
           wait: bool = True, boto_session=None, overrides: Sequence[str] = (), logs: bool = True):
    """Run a task as a SageMaker training job; with wait=True the TaskOutcome, else the submitted job's name."""
    request = build_request(task, params, data_root, teacher_dir, stage1_dir, run_id, store, boto_session, overrides)
    job_name = submit(request)
    if not wait:
        return job_name
    wait_for(job_name, request.boto_session, logs=logs)
    return collect(describe(job_name, request.boto_session), out_dir, store, params.compute.price_per_hour)

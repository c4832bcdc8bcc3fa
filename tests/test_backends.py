"""Training backends: the SageMaker-contract entry point, torchrun DDP, SageMaker jobs on a moto endpoint, cost."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
import yaml

from cardlib.params import from_dict, load_params

REPO = Path(__file__).resolve().parents[1]
REGION = "us-east-2"
ROLE = "arn:aws:iam::123456789012:role/cardlib-training"
TINY = ["data.n_cards=8", "data.n_sets=1", "data.photos_train=1", "data.photos_val=1", "data.photos_test=1",
        "data.input_size=[48, 32]", "data.card_size=[70, 50]", "data.photo_size=[96, 128]", "data.crops=simulated",
        "teacher.embed_dim=16", "teacher.batch_size=4", "teacher.epochs=1",
        "distill.stage1.batch_size=4", "distill.stage2.batch_size=4", "compute.device=cpu"]


def tiny_params(*extra: str):
    return load_params(REPO / "params" / "smoke.yaml", TINY + list(extra))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from cardlib.data.build import build_dataset

    root = tmp_path_factory.mktemp("data")
    build_dataset(tiny_params(), root)
    return root


@pytest.fixture(scope="module")
def trained_teacher(tiny_data, tmp_path_factory):
    """A teacher task's output dir (model/, history.json, metrics.json), trained in this process."""
    import torch

    from cardlib.train.tasks import run_task

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("teacher")
    run_task("teacher", tiny_params(), tiny_data, out)
    return out


def _sm_env(tmp_path: Path, data: Path, hps: dict, params) -> dict:
    channel = tmp_path / "input" / "params"
    channel.mkdir(parents=True)
    (channel / "params.yaml").write_text(yaml.safe_dump(params.to_dict()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update({"SM_MODEL_DIR": str(tmp_path / "model"), "SM_CHANNEL_DATA": str(data),
                "SM_CHANNEL_PARAMS": str(channel), "SM_HPS": json.dumps(hps), "OMP_NUM_THREADS": "1"})
    return env


# ---------------------------------------------------------------- the entry point

def test_entry_follows_the_sagemaker_contract(tiny_data, tmp_path):
    from cardlib.models.teacher import load_teacher

    env = _sm_env(tmp_path, tiny_data, {"task": "teacher", "teacher.epochs": 2}, tiny_params())
    proc = subprocess.run([sys.executable, "-m", "cardlib.train.entry"], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "model"
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # the hyperparameter beat the params file's teacher.epochs: 1
    assert "test_top1_seen" in json.loads((out / "metrics.json").read_text())
    teacher = load_teacher(out / "model")
    assert teacher.embed_dim == 16
    # epoch checkpoints stay beside the model dir (SageMaker's checkpoints folder), out of model.tar.gz
    assert not (out / "checkpoints").exists()
    assert (tmp_path / "checkpoints" / "checkpoints" / "epoch-0002").is_dir()


def test_entry_reads_hyperparameters_from_argv_and_refuses_bad_input(tiny_data, trained_teacher, tmp_path,
                                                                      monkeypatch, capsys):
    from cardlib.train import entry

    env = _sm_env(tmp_path, tiny_data, {}, tiny_params())
    for k in [k for k in os.environ if k.startswith("SM_")]:
        monkeypatch.delenv(k)
    for k in ("SM_MODEL_DIR", "SM_CHANNEL_DATA", "SM_CHANNEL_PARAMS"):
        monkeypatch.setenv(k, env[k])
    monkeypatch.setenv("SM_CHANNEL_TEACHER", str(trained_teacher / "model"))
    monkeypatch.setenv("SM_HPS", json.dumps({"task": "stage1", "distill.stage1.epochs": 3}))
    # SageMaker's torchrun driver passes the same hyperparameters again as `--key value` arguments
    ns = entry.resolve_args(["--task", "stage1", "--distill.stage1.epochs", "2", "--distill.stage1.lr=0.01"])
    assert ns.task == "stage1" and ns.teacher == str(trained_teacher / "model")
    params = load_params(ns.params, ns.overrides)
    assert params.distill.stage1.epochs == 2 and params.distill.stage1.lr == 0.01  # argv wins over SM_HPS
    assert Path(ns.work) == tmp_path / "checkpoints"

    monkeypatch.delenv("SM_CHANNEL_TEACHER")
    with pytest.raises(SystemExit) as e:
        entry.main(["--task", "stage1"])
    assert e.value.code == 2 and "task stage1 needs --teacher" in capsys.readouterr().err
    with pytest.raises(entry.EntryError, match="unknown hyperparameter 'epochs'"):
        entry.resolve_args(["--task", "teacher", "--epochs", "3"])
    monkeypatch.setenv("SM_HPS", "{}")
    with pytest.raises(entry.EntryError, match="--task is required"):
        entry.resolve_args([])
    with pytest.raises(entry.EntryError, match="params file not found"):
        entry.resolve_args(["--task", "teacher", "--params", str(tmp_path / "nope.yaml")])
    with pytest.raises(SystemExit) as e:  # a bad override is a params error, named, before any training
        entry.main(["--task", "teacher", "--teacher.epochs", "zero"])
    assert e.value.code == 2 and "teacher.epochs" in capsys.readouterr().err


# ---------------------------------------------------------------- local backends

def test_execute_in_process_returns_history_metrics_and_local_cost(tiny_data, tmp_path):
    from cardlib.train.backends import execute

    outcome = execute("teacher", tiny_params(), tiny_data, tmp_path / "t")
    assert outcome.model_dir == tmp_path / "t" / "model" and (outcome.model_dir / "cardlib_teacher.json").is_file()
    assert len(outcome.history) == 1 and "test_top1_novel" in outcome.metrics
    assert outcome.cost["backend"] == "local" and outcome.cost["usd"] == 0.0
    assert 0 < outcome.cost["compute_seconds"] < 120


def test_execute_torchrun_ddp_end_to_end(tiny_data, trained_teacher, tmp_path):
    from cardlib.models.student import load_student
    from cardlib.train.backends import execute

    params = tiny_params("compute.nproc=2", "distill.stage1.epochs=2")
    outcome = execute("stage1", params, tiny_data, tmp_path / "s1", teacher_dir=trained_teacher / "model")
    assert [h["epoch"] for h in outcome.history] == [1, 2]
    assert "agreement_mean_cos" in outcome.metrics
    load_student(outcome.model_dir)
    assert "task stage1 done on 2 process(es)" in (tmp_path / "s1" / "torchrun.log").read_text()
    # the resolved params beside the outputs are the ones that ran
    assert load_params(tmp_path / "s1" / "params.yaml") == params
    assert outcome.cost["compute_seconds"] > 0 and outcome.cost["usd"] == 0.0


# ---------------------------------------------------------------- SageMaker on moto

def _sm_params(bucket: str, *extra: str):
    return tiny_params("compute.backend=sagemaker", f"compute.role_arn={ROLE}", "compute.instance_type=ml.g5.2xlarge",
                       "compute.instance_count=2", "compute.max_run_s=7200",
                       "compute.price_per_hour={ml.g5.2xlarge: 1.515}", f"store.uri=s3://{bucket}/project/pcr",
                       f"store.region={REGION}", *extra)


def _tar_gz(src: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("model", "history.json", "metrics.json"):
            tar.add(src / name, arcname=name)
    return buf.getvalue()


def test_sagemaker_job_request_channels_wait_and_artifacts(s3_bucket, tiny_data, trained_teacher, tmp_path):
    from cardlib.models.teacher import load_teacher
    from cardlib.store import store_from_params
    from cardlib.train import sagemaker_job as sj

    params = _sm_params(s3_bucket)
    store = store_from_params(params)
    request = sj.build_request("stage1", params, tiny_data, trained_teacher / "model", None, "run-7", store,
                               overrides=["distill.stage1.epochs=3"])
    job_name = sj.submit(request)
    sm = boto3.client("sagemaker", region_name=REGION)
    d = sm.describe_training_job(TrainingJobName=job_name)

    image = d["AlgorithmSpecification"]["TrainingImage"]
    assert ".dkr.ecr.us-east-2." in image and "pytorch-training" in image and "gpu" in image
    assert d["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge" and d["ResourceConfig"]["InstanceCount"] == 2
    assert d["StoppingCondition"]["MaxRuntimeInSeconds"] == 7200
    assert d["HyperParameters"] == {"task": "stage1", "distill.stage1.epochs": "3"}
    assert d["OutputDataConfig"]["S3OutputPath"] == f"s3://{s3_bucket}/project/pcr/pipelines/training/run-7/jobs/"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in d["InputDataConfig"]}
    base = f"s3://{s3_bucket}/project/pcr/pipelines/training/run-7/inputs/stage1"
    for name in ("data", "teacher", "params"):
        assert channels[name] == f"{base}/{name}/"
    assert "stage1" not in channels  # stage 1 reads no stage-1 model

    # the channels exist in the bucket with the right content
    keys = store.list("pipelines/training/run-7")
    data_keys = [k for k in keys if "/inputs/stage1/data/" in k]
    assert any(k.endswith("/data/manifest.jsonl") for k in data_keys) and any("/data/crops/" in k for k in data_keys)
    assert not any("/data/photos/" in k for k in data_keys)  # training reads crops, never whole photos
    assert any(k.endswith("/teacher/cardlib_teacher.json") for k in keys)
    shipped = yaml.safe_load(store.get_text("pipelines/training/run-7/inputs/stage1/params/params.yaml"))
    assert from_dict(shipped) == params
    code = [k.split("/input/code/", 1)[1] for k in keys if "/input/code/" in k]
    assert {"cardlib_train.py", "requirements.txt", "cardlib/train/entry.py", "cardlib/train/tasks.py"} <= set(code)
    assert not any("__pycache__" in k or k.endswith(".pyc") for k in code)
    assert "torch" not in store.get_text(next(k for k in keys if k.endswith("/input/code/requirements.txt")))

    # moto completes jobs at once and never runs the container: stand in for it by uploading what the entry
    # point leaves in SM_MODEL_DIR, then wait, describe and collect as after a real job
    sj.wait_for(job_name, request.boto_session, logs=False, poll=1)
    described = sj.describe(job_name, request.boto_session)
    artifact = described["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == f"s3://{s3_bucket}/project/pcr/pipelines/training/run-7/jobs/{job_name}/output/model.tar.gz"
    store.put_bytes(_tar_gz(trained_teacher), store.key_for(artifact))
    outcome = sj.collect(described, tmp_path / "collected", store, params.compute.price_per_hour)
    assert load_teacher(outcome.model_dir).embed_dim == 16
    assert outcome.history == json.loads((trained_teacher / "history.json").read_text())
    assert outcome.cost["job_name"] == job_name and outcome.cost["artifact_uri"] == artifact
    assert outcome.cost["instance_type"] == "ml.g5.2xlarge" and outcome.cost["backend"] == "sagemaker"
    assert outcome.cost["billable_source"] == "TrainingEndTime-TrainingStartTime"  # moto reports no billable time


def test_region_mismatch_is_refused_before_any_job_call(s3_bucket, tiny_data, tmp_path):
    from cardlib.store import open_store, store_from_params
    from cardlib.train import sagemaker_job as sj

    params = _sm_params(s3_bucket)
    store = store_from_params(params)  # bucket and store client in us-east-2
    session = boto3.session.Session(region_name="us-west-2")
    calls = []
    session.events.register("before-call.sagemaker.*", lambda model, **kw: calls.append(model.name))
    mismatch = r"region mismatch: training image us-west-2.*store bucket us-east-2"
    with pytest.raises(sj.SageMakerJobError, match=mismatch):
        sj.launch("teacher", params, tiny_data, tmp_path / "out", run_id="run-8", store=store, boto_session=session)
    assert calls == []
    assert boto3.client("sagemaker", region_name="us-west-2").list_training_jobs()["TrainingJobSummaries"] == []
    assert store.list("pipelines/training/run-8") == []  # nothing uploaded either

    with pytest.raises(sj.SageMakerJobError, match="needs an s3:// store"):
        sj.launch("teacher", params, tiny_data, tmp_path / "out", run_id="run-8", store=open_store(str(tmp_path)))
    with pytest.raises(sj.SageMakerJobError, match="no price for ml.p4d.24xlarge"):
        sj.build_request("teacher", _sm_params(s3_bucket, "compute.instance_type=ml.p4d.24xlarge"), tiny_data,
                         run_id="run-8", store=store)
    with pytest.raises(sj.SageMakerJobError, match="needs teacher_dir"):
        sj.build_request("stage1", params, tiny_data, run_id="run-8", store=store)
    assert store.list("pipelines/training/run-8") == []


def test_job_cost_from_a_described_job():
    from cardlib.train.sagemaker_job import SageMakerJobError, job_cost

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    d = {"TrainingJobName": "cardlib-teacher-1", "TrainingJobStatus": "Completed",
         "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2},
         "BillableTimeInSeconds": 1800, "TrainingTimeInSeconds": 1900,
         "TrainingStartTime": start, "TrainingEndTime": start + timedelta(seconds=1900),
         "ModelArtifacts": {"S3ModelArtifacts": "s3://b/p/model.tar.gz"}}
    cost = job_cost(d, {"ml.g5.2xlarge": 1.515})
    # BillableTimeInSeconds is per instance: 1800 s × 2 instances × $1.515/h
    assert cost["billable_seconds"] == 3600 and cost["usd"] == pytest.approx(1.515)
    assert cost["compute_seconds"] == 3800 and cost["artifact_uri"] == "s3://b/p/model.tar.gz"
    spot = job_cost({**d, "BillableTimeInSeconds": 600, "ResourceConfig": {"InstanceType": "ml.g5.2xlarge",
                                                                           "InstanceCount": 1}},
                    {"ml.g5.2xlarge": 1.515})
    assert spot["usd"] == pytest.approx(600 * 1.515 / 3600)
    with pytest.raises(SageMakerJobError, match="no price for ml.g5.2xlarge"):
        job_cost(d, {"ml.m5.xlarge": 0.23})


def test_collect_refuses_an_archive_that_escapes_out_dir(s3_bucket, tmp_path):
    from cardlib.store import store_from_params
    from cardlib.train.sagemaker_job import collect

    store = store_from_params(_sm_params(s3_bucket))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    store.put_bytes(buf.getvalue(), "pipelines/training/r/jobs/j/output/model.tar.gz")
    d = {"TrainingJobName": "j", "TrainingJobStatus": "Completed", "BillableTimeInSeconds": 10,
         "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1},
         "ModelArtifacts": {"S3ModelArtifacts": store.uri_for("pipelines/training/r/jobs/j/output/model.tar.gz")}}
    with pytest.raises(tarfile.TarError):
        collect(d, tmp_path / "out", store, {"ml.g5.2xlarge": 1.0})
    assert not (tmp_path / "escaped.txt").exists()


def test_training_requirements_cover_what_the_entry_point_imports():
    from cardlib.train.sagemaker_job import IMAGE_PROVIDED, TRAINING_REQUIREMENTS

    code = ("import sys, importlib.metadata as md\n"
            "import cardlib.train.entry, cardlib.train.tasks\n"
            "pd = md.packages_distributions()\n"
            "dists = {d for m in list(sys.modules) for d in pd.get(m.split('.')[0], [])}\n"
            "import json; print(json.dumps(sorted(dists)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {n.lower() for n in json.loads(proc.stdout.strip().splitlines()[-1])}
    from importlib import metadata

    from packaging.requirements import Requirement

    declared = {Requirement(r).name.lower() for r in metadata.requires("cardlib") or []}
    needed = (imported & declared) - {n.lower() for n in IMAGE_PROVIDED}
    assert needed <= {n.lower() for n in TRAINING_REQUIREMENTS}, needed - set(TRAINING_REQUIREMENTS)

"""Registry side: publishing into the organized store, the manifest, MLflow/SageMaker registries, verify."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import boto3
import numpy as np
import pytest

from cardlib.params import from_dict
from cardlib.registry import (ManifestError, MlflowRegistry, PublishError, RegistryError, RegistryRegionError,
                              SageMakerRegistry, build_manifest, gate_decisions, publish_models, read_manifest,
                              registry_from_params, verify, verify_main, write_all, write_manifest)
from cardlib.store import Layout, ObjectInfo, open_store

REGION = "us-east-2"
GOOD_SHA = "0" * 64


def _write(path: Path, data: bytes) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[Path, object]:
    """A small conv net exported to ONNX (legacy exporter, opset 13) and the torch model it came from."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 8)).eval()
    path = tmp_path_factory.mktemp("onnx") / "student_stage2.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 160, 112),), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["embedding"],
                      dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
    return path, net


def make_run(run_dir: Path, onnx_path: Path, store, layout: Layout, teacher_artifact: str | None = None,
             stage1_onnx_uri: str | None = None) -> dict:
    """A fake-but-real run: tiny files under run_dir and stage dicts that follow the stage.json contract.
    Like the runner's ctx.output(publish_key=...), some outputs are already in the store (uri set)."""
    rng = np.random.default_rng(0)
    onnx_bytes = onnx_path.read_bytes()

    def out(rel: str, data: bytes, publish_key: str | None = None) -> dict:
        rec = {"path": rel, "uri": None, **_write(run_dir / rel, data)}
        if publish_key:
            rec["uri"] = store.put(run_dir / rel, publish_key).uri
        return rec

    def stage(name, outputs, metrics, model=None, usd=0.0, backend="local", artifact=None):
        return {"stage": name, "run_id": "r1", "status": "completed", "inputs_hash": "h" + name,
                "started_at": "2026-01-10T13:00:00+00:00", "finished_at": "2026-01-10T13:10:00+00:00",
                "wall_seconds": 600.0, "cpu_seconds": 550.0, "outputs": outputs, "metrics": metrics, "model": model,
                "cost": {"backend": backend, "compute_seconds": 600.0, "billable_seconds": None, "usd": usd,
                         "instance_type": "ml.g5.2xlarge" if artifact else None, "job_name": None,
                         "artifact_uri": artifact}}

    def model(mid, version, parent, files):
        return {"id": mid, "version": version, "parent": parent, "files": files, "config": {"epochs": 2}}

    teacher_w = out("01/model/model.safetensors", rng.bytes(3000), f"{layout.teacher('pytorch')}/teacher.safetensors")
    teacher_cfg = out("01/model/config.json", b'{"embed_dim": 8}', f"{layout.teacher('pytorch')}/config.json")
    if stage1_onnx_uri:  # made elsewhere: only an S3 object outside the organized layout, no local file
        stage1_onnx = {"path": "02/student_stage1.onnx", "uri": stage1_onnx_uri,
                       "sha256": hashlib.sha256(onnx_bytes).hexdigest(), "size": len(onnx_bytes)}
    else:
        stage1_onnx = out("02/student_stage1.onnx", onnx_bytes)
    _write(run_dir / "05/gallery/embeddings.npy", rng.bytes(512))
    _write(run_dir / "05/gallery/cards.json", b'["base1-4", "base1-58"]')
    from cardlib.evaluate import gates

    gate_table = gates({"teacher_top1": 0.9, "student_top1": 0.89, "int8_top1": 0.885}, 0.97, 0.01, parity_ok=False)
    stages = [
        stage("00_data", {}, {"n_cards": 40}),
        stage("01_teacher_training", {"teacher_model.safetensors": teacher_w, "teacher_config.json": teacher_cfg,
                                      "teacher_model": teacher_w}, {"top1": 0.9},
              model("teacher", "v1.0", None, ["teacher_model.safetensors", "teacher_config.json"]), 4.5,
              "sagemaker" if teacher_artifact else "local", teacher_artifact),
        stage("02_distill_stage1", {"stage1_weights": out("02/student_stage1.safetensors", rng.bytes(2000)),
                                    "stage1_onnx": stage1_onnx}, {"val_top1": 0.8},
              model("student_stage1", "v1.0", "teacher", ["stage1_weights", "stage1_onnx"]), 1.0),
        stage("03_distill_stage2", {"stage2_weights": out("03/student_stage2.safetensors", rng.bytes(2100),
                                                          f"{layout.stage2}/student_stage2.safetensors")},
              {"val_top1": 0.85}, model("student_stage2", "v2.0", "student_stage1", ["stage2_weights"]), 2.0),
        # the export stage declares no model: its ONNX file joins stage 2 because it sits in stage 2's folder
        stage("04_onnx_export", {"onnx_cpu": out("04/student_stage2_final.onnx", onnx_bytes,
                                                 f"{layout.stage2}/student_stage2_final.onnx")}, {"parity_ok": False}),
        stage("05_hailo_compile", {
            "int8_onnx": out("05/student_int8.onnx", onnx_bytes, f"{layout.hailo}/student_int8.onnx"),
            "alls": out("05/model.alls", b"normalization1 = normalization([123.7], [58.4])\n",
                        f"{layout.hailo}/model.alls"),
            "calibration": out("05/calib.npy", rng.bytes(800), f"{layout.calibration}/calib.npy"),
            "hailo_summary": out("05/hailo_summary.json", b"{}", f"{layout.hailo}/hailo_summary.json"),
            "gallery": {"path": "05/gallery", "uri": None, "sha256": None, "size": None}},
              {"hailo_path": "int8-emulation"},
              model("hailo", "v2.1", "student_stage2", ["int8_onnx", "alls", "calibration"])),
        stage("06_evaluation", {"metrics": out("06/metrics.json", b"{}", f"{layout.metrics}/r1.json")},
              {"gates": gate_table}),
    ]
    return {s["stage"]: s for s in stages}


# ---------------------------------------------------------------- local store, MLflow registry, verify

def build_project(base: Path, onnx_path: Path) -> dict:
    """A published local store: models, manifest, MLflow registry versions, experiments and derived documents."""
    from cardlib import tracking

    params = from_dict({"store": {"uri": str(base / "store")}})
    store, layout = open_store(params.store.uri), Layout.from_params(params)
    store.init(layout)
    stages = make_run(base / "run", onnx_path, store, layout)
    for key in tracking.EXPERIMENTS:
        with tracking.stage_run(params, store, key, "r1"):
            pass
    published = publish_models(store, layout, base / "run", stages)
    manifest = build_manifest(store, published, stages, "r1", "abc1234")
    write_manifest(store, manifest)
    registry = registry_from_params(params, store)
    decisions = gate_decisions(stages["06_evaluation"]["metrics"]["gates"])
    versions = registry.register_all(published, stages, {m: d.passed for m, d in decisions.items()}, run_id="r1")
    write_all(store, layout, params, base / "run", stages, manifest)
    return dict(params=params, store=store, layout=layout, stages=stages, published=published,
                manifest=manifest, registry=registry, versions=versions, run_dir=base / "run")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_onnx):
    """One published project shared by the tests that only read it (building one costs seconds of MLflow setup)."""
    return build_project(tmp_path_factory.mktemp("project"), tiny_onnx[0])


@pytest.fixture
def store_copy(project, tmp_path):
    """A private copy of the shared project's store folder and run dir, for tests that change files."""
    shutil.copytree(project["store"].root, tmp_path / "store")
    shutil.copytree(project["run_dir"], tmp_path / "run")
    return open_store(str(tmp_path / "store")), tmp_path / "run"


def test_publish_puts_every_model_file_in_the_organized_layout(project):
    store, published = project["store"], project["published"]
    keys = {mid: sorted(o.key for o in objs) for mid, objs in published.items()}
    assert keys == {
        "teacher": ["models/dinov3-teacher/v1.0/pytorch/config.json",
                    "models/dinov3-teacher/v1.0/pytorch/teacher.safetensors"],
        "student_stage1": ["models/efficientnet-student/stage1/v1.0/student_stage1.onnx",
                           "models/efficientnet-student/stage1/v1.0/student_stage1.safetensors"],
        "student_stage2": ["models/efficientnet-student/stage2/v2.0/student_stage2.safetensors",
                           "models/efficientnet-student/stage2/v2.0/student_stage2_final.onnx"],
        "hailo": ["models/efficientnet-hailo/calibration/calib.npy",
                  "models/efficientnet-hailo/v2.1/hailo_summary.json",
                  "models/efficientnet-hailo/v2.1/model.alls", "models/efficientnet-hailo/v2.1/student_int8.onnx"]}
    for objs in published.values():
        for o in objs:
            assert store.sha256(o.key) == o.sha256 and store.size(o.key) == o.size
    manifest = read_manifest(store)
    assert manifest.models["student_stage2"].parent == "student_stage1"
    assert manifest.total_cost_usd == pytest.approx(7.5)
    assert [f.name for f in manifest.models["teacher"].files] == ["teacher.safetensors", "config.json"]
    assert {f.key for _, f in manifest.files()} == {o.key for objs in published.values() for o in objs}


def test_republishing_unchanged_files_uploads_nothing(project):
    store = project["store"]
    mtimes = {k: (store.root / k).stat().st_mtime_ns for k in store.list("models")}
    again = publish_models(store, project["layout"], project["run_dir"], project["stages"])
    assert again == project["published"]
    assert {k: (store.root / k).stat().st_mtime_ns for k in store.list("models")} == mtimes


def test_publish_refuses_a_file_changed_since_its_stage(project, store_copy):
    store, run_dir = store_copy
    stages = project["stages"]
    (run_dir / stages["02_distill_stage1"]["outputs"]["stage1_onnx"]["path"]).write_bytes(b"tampered")
    with pytest.raises(PublishError, match="changed since its stage"):
        publish_models(store, project["layout"], run_dir, stages)


def test_verify_passes_on_a_correct_store_and_verify_main_says_so(project, capsys):
    report = verify(project["store"], project["registry"], project["params"])
    assert report.ok, report.table()
    checks = {r.check for r in report.rows}
    assert {"manifest", "structure", "object", "registry", "registered", "experiments"} <= checks
    assert len([r for r in report.rows if r.check == "object"]) == len(project["manifest"].files())
    assert verify_main(None, project["params"]) == 0
    assert "every check passed" in capsys.readouterr().out


def test_verify_names_each_broken_claim(tmp_path, tiny_onnx, capsys):
    """A deleted object, a same-size corrupted object, a registry entry with another sha256, an MLflow run
    missing from the experiments index: verify fails on exactly those, and only those."""
    from cardlib import tracking

    p = build_project(tmp_path, tiny_onnx[0])
    store, registry = p["store"], p["registry"]
    deleted = "models/efficientnet-student/stage1/v1.0/student_stage1.safetensors"
    store.delete(deleted)
    corrupted = "models/efficientnet-student/stage2/v2.0/student_stage2_final.onnx"
    data = bytearray(store.get_bytes(corrupted))
    data[len(data) // 2] ^= 0xFF
    store.put_bytes(bytes(data), corrupted)
    obj = next(o for o in p["published"]["student_stage1"] if o.key.endswith(".onnx"))
    wrong = registry.register("student_stage1", ObjectInfo(obj.key, obj.uri, obj.size, GOOD_SHA), version="v1.0",
                              parent="teacher", passed=False)
    with tracking.stage_run(p["params"], store, "stage1", "r1"):
        pass
    report = verify(store, registry, p["params"])
    failed = {(r.check, r.target): r.detail for r in report.failures()}
    stage2 = next(v for v in p["versions"] if v.model_id == "student_stage2")
    assert set(failed) == {("object", deleted), ("object", corrupted),
                           ("registry", f"cardlib-student-stage1 v{wrong.version} (student_stage1)"),
                           ("registry", f"cardlib-student-stage2 v{stage2.version} (student_stage2)"),
                           ("experiments", "experiments/mlflow/experiments_index.json")}, report.table()
    assert failed[("object", deleted)] == "object missing"
    assert "sha256" in failed[("object", corrupted)]  # same size, different bytes
    assert "sha256" in failed[("registry", f"cardlib-student-stage1 v{wrong.version} (student_stage1)")]
    assert verify_main(None, p["params"]) == 1
    assert "5 check(s) FAILED" in capsys.readouterr().out


def test_manifest_refuses_objects_that_are_not_in_the_store(project, store_copy):
    store, _ = store_copy
    published, stages = project["published"], project["stages"]
    ghost = dict(published)
    ghost_key = "models/efficientnet-hailo/v2.1/x.hef"
    ghost["hailo"] = published["hailo"] + [ObjectInfo(ghost_key, store.uri_for(ghost_key), 5, GOOD_SHA)]
    with pytest.raises(ManifestError, match="not in the store"):
        build_manifest(store, ghost, stages, "r1", None)
    manifest = build_manifest(store, published, stages, "r1", None)
    store.delete(manifest.models["teacher"].files[0].key)
    with pytest.raises(ManifestError, match="not in the store"):
        write_manifest(store, manifest)
    with pytest.raises(ManifestError, match="describes store"):
        write_manifest(project["store"], manifest)


def test_manifest_schema_is_checked_on_read(project, store_copy):
    store, _ = store_copy
    layout = project["layout"]
    doc = json.loads(store.get_text(layout.manifest))
    doc["models"]["hailo"]["parent"] = "student_stage3"
    doc["models"]["teacher"]["files"][0]["size"] = -1
    store.put_text(json.dumps(doc), layout.manifest)
    with pytest.raises(ManifestError) as err:
        read_manifest(store)
    assert "models.hailo.parent" in str(err.value) and "models.teacher.files.0.size" in str(err.value)
    doc = json.loads(project["manifest"].model_dump_json())
    del doc["models"]["student_stage1"]  # stage2's lineage parent would dangle
    store.put_text(json.dumps(doc), layout.manifest)
    with pytest.raises(ManifestError, match="lineage parent 'student_stage1'"):
        read_manifest(store)


def test_derived_documents(project):
    store, layout = project["store"], project["layout"]
    html = store.get_text(f"{layout.dashboards}/dashboard.html")
    assert "<svg" in html and "Cost tracking" in html
    assert "<script" not in html and "<link" not in html and "src=" not in html and "href=" not in html
    config = json.loads(store.get_text(f"{layout.dashboards}/dashboard_config.json"))
    assert config["dashboards"]["cost_tracking"]["total_usd"] == pytest.approx(7.5)
    index = json.loads(store.get_text(layout.experiments_index))
    assert sorted(index["experiments"]) == ["student-stage1", "student-stage2", "teacher"]
    assert store.exists("pipelines/training/r1/params.yaml")
    deploy = store.list("pipelines/deployment/v2.1")
    assert deploy == ["pipelines/deployment/v2.1/deployment.json", "pipelines/deployment/v2.1/gallery/cards.json",
                      "pipelines/deployment/v2.1/gallery/embeddings.npy",
                      "pipelines/deployment/v2.1/hailo_summary.json",
                      "pipelines/deployment/v2.1/model.alls", "pipelines/deployment/v2.1/student_int8.onnx"]
    readme = store.get_text("README.md")
    assert "cardlib store get models/dinov3-teacher/v1.0/pytorch/teacher.safetensors" in readme
    assert "aws s3 cp" not in readme  # a local store
    assert "teacher → student_stage1 → student_stage2 → hailo" in readme


# ---------------------------------------------------------------- MLflow registry round trip

def test_mlflow_aliases_follow_the_gates_and_load_embeds_an_image(project, tiny_onnx):
    import torch

    registry = project["registry"]
    assert isinstance(registry, MlflowRegistry)
    by_name = {v.name: v for v in project["versions"]}
    assert by_name["cardlib-student-stage1"].status == "champion"  # retention passed
    assert by_name["cardlib-student-stage2"].status == "challenger"  # ONNX parity failed
    with pytest.raises(RegistryError, match="not registered"):
        registry.load_by_alias("cardlib-student-stage2", "champion")
    model = registry.load_by_alias("cardlib-student-stage2", "challenger")
    crop = np.random.default_rng(1).integers(0, 255, (350, 250, 3), dtype=np.uint8)
    got = model.embed_images([crop])
    with torch.no_grad():
        want = tiny_onnx[1](model.preprocess.batch([crop])).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert got.shape == (1, 8) and np.allclose(got, want, atol=1e-5)
    # re-registering is idempotent; a later passing gate promotes the same version
    again = registry.register_all(project["published"], project["stages"],
                                  {"teacher": True, "student_stage1": True, "student_stage2": True, "hailo": True})
    assert not any(v.created for v in again)
    assert {v.name: v.status for v in registry.versions()} == {
        "cardlib-teacher": "champion", "cardlib-student-stage1": "champion",
        "cardlib-student-stage2": "challenger,champion", "cardlib-hailo": "challenger,champion"}
    assert registry.load_by_alias("cardlib-student-stage2", "champion").version == model.version


def test_gate_decisions_follow_the_evaluation_gate_table():
    from cardlib.evaluate import gates

    ok = gate_decisions(gates({"teacher_top1": 0.9, "student_top1": 0.89, "int8_top1": 0.885}, 0.97, 0.01, True))
    assert all(d.passed for d in ok.values())
    int8 = gate_decisions(gates({"teacher_top1": 0.9, "student_top1": 0.89, "int8_top1": 0.80}, 0.97, 0.01, True))
    assert {m: d.passed for m, d in int8.items()} == {"teacher": True, "student_stage1": True,
                                                      "student_stage2": True, "hailo": False}
    assert int8["hailo"].reasons[0].startswith("int8_drop")
    weak = gate_decisions(gates({"teacher_top1": 0.9, "student_top1": 0.5, "int8_top1": 0.5}, 0.97, 0.01, True))
    assert not any(d.passed for d in weak.values())
    assert not gate_decisions({})["teacher"].passed  # a gate nobody evaluated does not pass


# ---------------------------------------------------------------- S3 (moto server): multipart copy, SageMaker

def _count(client, event: str) -> list:
    calls = []
    client.meta.events.register(event, lambda **kw: calls.append(kw.get("event_name")))
    return calls


@pytest.fixture
def s3_run(tmp_path, s3_bucket, tiny_onnx):
    """A run whose 12 MiB teacher artifact lives in S3 outside the layout, like a SageMaker job's model.tar.gz,
    and whose stage-1 ONNX file exists only as an S3 object outside the layout."""
    s3 = boto3.client("s3", region_name=REGION)
    big = os.urandom(12 * 1024 * 1024)
    job_key = "models/embedding/teacher/job-1/output/model.tar.gz"
    s3.put_object(Bucket=s3_bucket, Key=job_key, Body=big)  # no sha256 metadata: not written by cardlib
    s3.put_object(Bucket=s3_bucket, Key="scratch/student_stage1.onnx", Body=tiny_onnx[0].read_bytes())
    store = open_store(f"s3://{s3_bucket}/project/pokemon-card-recognition", REGION,
                       multipart_threshold_mb=5, multipart_chunksize_mb=5, max_concurrency=1)
    layout = Layout()
    store.init(layout)
    stages = make_run(tmp_path / "run", tiny_onnx[0], store, layout, f"s3://{s3_bucket}/{job_key}",
                      f"s3://{s3_bucket}/scratch/student_stage1.onnx")
    return dict(store=store, layout=layout, stages=stages, big=big, run_dir=tmp_path / "run")


def test_large_artifact_goes_through_multipart_copy(s3_run):
    store, big = s3_run["store"], s3_run["big"]
    part_copies, single_copies = _count(store.client, "before-call.s3.UploadPartCopy"), \
        _count(store.client, "before-call.s3.CopyObject")
    published = publish_models(store, s3_run["layout"], s3_run["run_dir"], s3_run["stages"])
    teacher = next(o for o in published["teacher"] if o.key.endswith(".tar.gz"))
    assert teacher.key == "models/dinov3-teacher/v1.0/pytorch/model.tar.gz"
    # 12 MiB in 5 MiB parts; the one CopyObject is the small stage-1 ONNX file
    assert len(part_copies) == 3 and len(single_copies) == 1
    assert store.get_bytes(teacher.key) == big and teacher.sha256 == hashlib.sha256(big).hexdigest()
    onnx = next(o for o in published["student_stage1"] if o.key.endswith(".onnx"))
    assert onnx.key == "models/efficientnet-student/stage1/v1.0/student_stage1.onnx"
    uploads = _count(store.client, "before-call.s3.PutObject")
    again = publish_models(store, s3_run["layout"], s3_run["run_dir"], s3_run["stages"])
    assert again == published
    assert not uploads and len(single_copies) == 1  # unchanged local files and known-sha copies are skipped


def test_sagemaker_registration_is_idempotent_and_verified(s3_run):
    store, stages = s3_run["store"], s3_run["stages"]
    published = publish_models(store, s3_run["layout"], s3_run["run_dir"], stages, tarball=True)
    assert [o.key for o in published["student_stage1"]][-1] == "models/efficientnet-student/stage1/v1.0/model.tar.gz"
    write_manifest(store, build_manifest(store, published, stages, "r1", None))
    registry = SageMakerRegistry(store, "pokemon-card-recognition-models")
    assert registry.image_uri.startswith("763104351884.dkr.ecr.us-east-2.amazonaws.com/pytorch-inference:2.5")
    passed = {"teacher": True, "student_stage1": True, "student_stage2": False, "hailo": True}
    first = registry.register_all(published, stages, passed)
    second = registry.register_all(publish_models(store, s3_run["layout"], s3_run["run_dir"], stages, tarball=True),
                                   stages, passed)
    assert all(v.created for v in first) and not any(v.created for v in second)
    versions = registry.versions()
    assert len(versions) == 4 and len({v.sha256 for v in versions}) == 4
    status = {v.model_id: v.status for v in versions}
    assert status["student_stage2"] == "PendingManualApproval" and status["teacher"] == "Approved"
    assert all(v.uri.startswith(store.uri + "/models/") and v.uri.endswith("model.tar.gz") for v in versions)
    teacher = next(v for v in versions if v.model_id == "teacher")
    assert teacher.uri == store.uri + "/models/dinov3-teacher/v1.0/pytorch/model.tar.gz"  # the job's own artifact
    report = verify(store, registry)
    assert {r.check for r in report.failures()} == {"experiments"}  # this test writes no experiments index
    assert all(r.status == "ok" for r in report.rows if r.check in ("registry", "registered", "object"))


def test_sagemaker_needs_a_tarball():
    registry = SageMakerRegistry.__new__(SageMakerRegistry)
    with pytest.raises(RegistryError, match="no .tar.gz object"):
        registry.primary_object("hailo", [ObjectInfo("models/efficientnet-hailo/v2.1/a.hef", "s3://b/a.hef", 1,
                                                     GOOD_SHA)])


def test_region_mismatch_is_refused_before_any_sagemaker_call(s3_run, aws_endpoint):
    sm = boto3.client("sagemaker", region_name=REGION)
    calls = _count(sm, "before-call.sagemaker")
    with pytest.raises(RegistryRegionError, match="inference image in us-east-1"):
        SageMakerRegistry(s3_run["store"], image_uri="763104351884.dkr.ecr.us-east-1.amazonaws.com/"
                                                     "pytorch-inference:2.0-cpu-py310", client=sm)
    west = "cardlib-west-" + os.urandom(4).hex()
    boto3.client("s3", region_name="us-west-2").create_bucket(
        Bucket=west, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    with pytest.raises(RegistryRegionError, match="store bucket in us-west-2, SageMaker client in us-east-2"):
        SageMakerRegistry(open_store(f"s3://{west}/project", "us-west-2"), client=sm)
    assert calls == []
    SageMakerRegistry(s3_run["store"], client=sm).versions()
    assert calls  # the hook does see SageMaker calls when the regions agree
    with pytest.raises(RegistryError, match="needs an s3:// store"):
        SageMakerRegistry(open_store(str(Path(s3_run["run_dir"]) / "local-store")), client=sm)

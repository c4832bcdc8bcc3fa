"""The real notebooks end to end on the smoke params: local store and S3 store (moto), reports, manifest, verify."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cardlib.cli import main
from cardlib.store import open_store

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "params" / "smoke.yaml")
STAGES = ["00_data", "01_teacher_training", "02_distill_stage1", "03_distill_stage2", "04_onnx_export",
          "05_hailo_compile", "06_evaluation", "07_registry"]
pytestmark = pytest.mark.slow


def _run(tmp: Path, store_uri: str, *extra: str) -> int:
    return main(["run", "-p", SMOKE, "--set", f"store.uri={store_uri}", *extra, "--notebooks", str(REPO / "notebooks"),
                 "--runs-dir", str(tmp / "runs"), "--reports-dir", str(tmp / "reports")])


def _check_store(store, run_id: str) -> dict:
    prefix = f"analytics/reports/{run_id}"
    for s in STAGES:
        assert store.exists(f"{prefix}/{s}.html") and store.exists(f"{prefix}/{s}.full.html"), s
    index = store.get_text(f"{prefix}/index.html")
    assert "Headline" in index and "Hailo path" in index and index.count("completed") >= len(STAGES)
    assert "data:image/png;base64" in store.get_text(f"{prefix}/00_data.html")  # sample grids are in the report
    manifest = json.loads(store.get_text("metadata/project_manifest.json"))
    models = manifest["models"]
    assert set(models) == {"teacher", "student_stage1", "student_stage2", "hailo"}
    assert [models[m]["parent"] for m in ("teacher", "student_stage1", "student_stage2", "hailo")] == \
        [None, "teacher", "student_stage1", "student_stage2"]
    for m in models.values():
        for f in m["files"]:
            assert store.sha256(f["key"]) == f["sha256"]
    assert store.exists(f"analytics/metrics/{run_id}.json")
    assert any(k.endswith("bundle.json") for k in store.list("pipelines/inference/"))
    return manifest


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, cardlib_kernel):
    tmp = tmp_path_factory.mktemp("e2e-local")
    assert _run(tmp, str(tmp / "store")) == 0
    (run_dir,) = (tmp / "runs").iterdir()
    return tmp, run_dir.name


def test_smoke_pipeline_on_a_local_store(local_run, capsys):
    tmp, run_id = local_run
    store = open_store(str(tmp / "store"))
    _check_store(store, run_id)
    assert main(["verify", "--store", str(tmp / "store"), "-p", SMOKE]) == 0
    assert "every check passed" in capsys.readouterr().out
    assert (tmp / "reports" / run_id / "index.html").is_file() and (tmp / "reports" / "index.html").is_file()
    run_dir = tmp / "runs" / run_id
    lineage = {}
    for stage, output in (("01_teacher_training", "teacher_model"), ("02_distill_stage1", "student_model"),
                          ("03_distill_stage2", "student_model")):
        rec = json.loads((run_dir / stage / "stage.json").read_text())
        out = rec["outputs"][output]
        assert len(out["sha256"]) == 64 and out["uri"] and store.sha256(store.key_for(out["uri"])) == out["sha256"]
        assert rec["cost"]["backend"] == "local" and rec["wall_seconds"] > 0
        lineage[rec["model"]["id"]] = rec["model"]["parent"]
    assert lineage == {"teacher": None, "student_stage1": "teacher", "student_stage2": "student_stage1"}


def test_hailo_stage_and_release_gate_measure_one_int8_drop(local_run):
    tmp, run_id = local_run
    run_dir = tmp / "runs" / run_id
    hailo = json.loads((run_dir / "05_hailo_compile" / "hailo_summary.json").read_text())["metrics"]
    gate = json.loads((run_dir / "06_evaluation" / "metrics.json").read_text())["gates"]["int8_drop"]
    assert hailo["int8_top1_drop_all"] == pytest.approx(gate["value"], abs=1e-9)
    assert hailo["int8_mean_cos"] > 0.99  # the emulation's integer sums do not saturate


def test_stage_reports_and_evaluation_measure_one_top1(local_run):
    tmp, run_id = local_run
    run_dir = tmp / "runs" / run_id
    variants = {v["variant"]: v["reports"]["embedding"]
                for v in json.loads((run_dir / "06_evaluation" / "metrics.json").read_text())["variants"]}
    for stage, variant in (("01_teacher_training", "teacher"), ("03_distill_stage2", "student stage 2")):
        stage_metrics = json.loads((run_dir / stage / "stage.json").read_text())["metrics"]
        for tag in ("seen", "novel"):
            assert stage_metrics[f"test_top1_{tag}"] == pytest.approx(variants[variant][tag]["top1"], abs=1e-9), (stage, tag)


def test_recognize_with_the_published_bundle(local_run, capsys):
    tmp, run_id = local_run
    run_dir = tmp / "runs" / run_id
    rows = [json.loads(x) for x in (run_dir / "00_data" / "data" / "manifest.jsonl").read_text().splitlines()]
    photos = [run_dir / "00_data" / "data" / r["photo"] for r in rows if r["split"] == "test"][:4]
    bundle = tmp / "store" / "pipelines" / "inference" / "v2.0"
    capsys.readouterr()
    assert main(["recognize", "--bundle", str(bundle), "--json", *map(str, photos)]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(out) == len(photos) and all(r["matches"] and "found" in r for r in out)


def test_index_page_renders_in_headless_chromium(local_run, chromium, tmp_path):
    tmp, run_id = local_run
    shot = tmp_path / "index.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
                    (tmp / "reports" / run_id / "index.html").as_uri()], check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape[0] >= 1000 and img.std() > 10  # not a blank page
    assert (img < 128).mean() > 0.005  # there is text and the plots are drawn
    html = (tmp / "reports" / run_id / "index.html").read_text()
    assert "<img" not in html or "data:image/png;base64" in html  # no images that point elsewhere


def test_smoke_pipeline_on_an_s3_store(s3_bucket, tmp_path, cardlib_kernel, capsys):
    uri = f"s3://{s3_bucket}/project/pokemon-card-recognition"
    assert _run(tmp_path, uri, "--set", "store.region=us-east-2") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    _check_store(open_store(uri, "us-east-2"), run_dir.name)
    assert main(["verify", "--store", uri, "-p", SMOKE, "--set", "store.region=us-east-2"]) == 0

"""Per-stage wall/CPU seconds and the headline quality of a fresh `cardlib run` (no cached stages), as JSON.

    python benchmarks/pipeline_time.py -p params/default.yaml            # runs the pipeline in a temp folder
    python benchmarks/pipeline_time.py --run-dir runs/<run_id> --out X   # summarises a run that already happened
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from machine_speed import machine_speed

from cardlib.params import load_params
from cardlib.pipeline import run_pipeline
from cardlib.run import Run, read_json

REPO = Path(__file__).resolve().parents[1]
QUALITY = {"00": ("cards", "train_cards", "novel_cards", "photos", "finder_found_rate",
                  "finder_found_rate_before_gallery_check"),
           "01": ("test_top1_seen", "test_top1_novel"),
           "02": ("test_top1_seen", "test_top1_novel", "retention_seen", "retention_novel", "agreement_mean_cos"),
           "03": ("test_top1_seen", "test_top1_novel", "retention_seen", "retention_novel", "agreement_mean_cos"),
           "04": ("parity_max_abs", "parity_min_cos", "ort_ms_per_image_b1"),
           "05": ("hailo_path", "int8_top1_drop_all", "int8_top1_drop_seen", "int8_top1_drop_novel", "int8_mean_cos"),
           "06": ("fused_top1_seen", "fused_top1_novel", "embedding_top1_seen", "embedding_top1_novel",
                  "hash_top1_seen", "hash_top1_novel", "open_set_unknown_recall", "open_set_right_rejected_rate",
                  "open_set_answered_accuracy", "open_set_accuracy_without_rejection", "gates_pass", "headline"),
           "07": ("verify_ok",)}


def summarize(run_dir: Path) -> dict:
    run = Run(run_dir)
    stages = []
    for rec_path in sorted(run.dir.glob("*/stage.json")):
        rec = read_json(rec_path) or {}
        keys = QUALITY.get(rec.get("stage", "")[:2], ())
        stages.append({"stage": rec.get("stage"), "status": rec.get("status"), "wall_seconds": rec.get("wall_seconds"),
                       "cpu_seconds": rec.get("cpu_seconds"),
                       "metrics": {k: rec.get("metrics", {}).get(k) for k in keys if k in rec.get("metrics", {})}})
    return {"run_id": run.run_id, "params_name": run.params.run.name,
            "stage_wall_seconds_total": round(sum(s["wall_seconds"] or 0 for s in stages), 1), "stages": stages,
            # how fast the machine was when the summary was written: timings compare only next to this
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), **machine_speed()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--params", default=str(REPO / "params" / "default.yaml"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--run-dir", type=Path, help="summarise this finished run instead of starting one")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/pipeline_time_<name>.json)")
    args = ap.parse_args()
    if args.run_dir:
        out = summarize(args.run_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="cardlib-bench-") as tmp:
            params = load_params(args.params, [f"store.uri={tmp}/store", *args.set])
            t0 = time.time()
            result = run_pipeline(params, notebooks_dir=REPO / "notebooks", runs_dir=Path(tmp) / "runs",
                                  reports_dir=Path(tmp) / "reports")
            out = {**summarize(result.run_dir), "total_wall_seconds": round(time.time() - t0, 1),
                   "params": Path(args.params).name, "overrides": args.set}
    path = Path(args.out or REPO / "benchmarks" / "results" / f"pipeline_time_{out['params_name']}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

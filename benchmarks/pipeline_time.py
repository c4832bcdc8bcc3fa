"""Per-stage wall/CPU seconds of a fresh `cardlib run` (no cached stages) for a params file, as JSON."""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from cardlib.params import load_params
from cardlib.pipeline import run_pipeline
from cardlib.run import read_json

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-p", "--params", default=str(REPO / "params" / "default.yaml"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", help="JSON path (default benchmarks/results/pipeline_time_<name>.json)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cardlib-bench-") as tmp:
        params = load_params(args.params, [f"store.uri={tmp}/store", *args.set])
        t0 = time.time()
        result = run_pipeline(params, notebooks_dir=REPO / "notebooks", runs_dir=Path(tmp) / "runs",
                              reports_dir=Path(tmp) / "reports")
        total = time.time() - t0
        stages = []
        for s in result.stages:
            rec = read_json(result.run_dir / s["stage"] / "stage.json") or {}
            stages.append({"stage": s["stage"], "status": s["status"], "wall_seconds": rec.get("wall_seconds"),
                           "cpu_seconds": rec.get("cpu_seconds")})
    out = {"params": Path(args.params).name, "overrides": args.set, "total_wall_seconds": round(total, 2),
           "stages": stages, "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()}}
    path = Path(args.out or REPO / "benchmarks" / "results" / f"pipeline_time_{params.run.name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

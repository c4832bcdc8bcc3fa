"""Where a training task runs: in-process, torchrun DDP on this machine, or a SageMaker training job."""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
import torch
import yaml

from cardlib.store import atomic_write_text, store_from_params
from cardlib.train.ddp import launch_torchrun
from cardlib.train.tasks import TASKS, run_task

RESOLVED_PARAMS = "params.yaml"  # the resolved params of a torchrun launch, beside its outputs
TORCHRUN_LOG = "torchrun.log"


class BackendError(RuntimeError):
    """A training backend could not run or finish a task; the message says why."""


@dataclass
class TaskOutcome:
    """A finished task: where its outputs are, its history and metrics, and what it cost."""

    out_dir: Path
    model_dir: Path
    history: list[dict]
    metrics: dict
    cost: dict = field(default_factory=dict)


def local_cost(wall_s: float, processes: int) -> dict:
    """Cost record of a run on this machine: compute time = wall × processes, nothing billed."""
    return {"backend": "local", "compute_seconds": round(wall_s * processes, 3), "billable_seconds": 0,
            "usd": 0.0, "instance_type": None, "job_name": None, "artifact_uri": None}


def read_outcome(out_dir: str | Path, cost: dict) -> TaskOutcome:
    """A TaskOutcome from a task's output dir (model/, history.json, metrics.json)."""
    out = Path(out_dir)
    missing = [n for n in ("model", "history.json", "metrics.json") if not (out / n).exists()]
    if missing:
        raise BackendError(f"task outputs missing in {out}: {', '.join(missing)}")
    return TaskOutcome(out, out / "model", json.loads((out / "history.json").read_text()),
                       json.loads((out / "metrics.json").read_text()), cost)


def _entry_args(task, params_file, data_root, out_dir, teacher_dir, stage1_dir) -> list[str]:
    args = ["--task", task, "--params", str(params_file), "--data", str(data_root), "--out", str(out_dir)]
    if teacher_dir is not None:
        args += ["--teacher", str(teacher_dir)]
    if stage1_dir is not None:
        args += ["--stage1", str(stage1_dir)]
    return args


def run_torchrun(task: str, params, data_root, out_dir, teacher_dir=None, stage1_dir=None) -> TaskOutcome:
    """torchrun `cardlib.train.entry` with compute.nproc processes; the resolved params go to out_dir/params.yaml."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params_file = atomic_write_text(out / RESOLVED_PARAMS, yaml.safe_dump(params.to_dict(), sort_keys=False))
    nproc = params.compute.nproc
    started = time.perf_counter()
    args = _entry_args(task, params_file, data_root, out, teacher_dir, stage1_dir)
    try:
        proc = launch_torchrun("cardlib.train.entry", args, nproc, timeout=params.compute.max_run_s)
    except subprocess.TimeoutExpired:
        raise BackendError(f"torchrun of task {task} ran past compute.max_run_s={params.compute.max_run_s}") from None
    wall = time.perf_counter() - started
    (out / TORCHRUN_LOG).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise BackendError(f"torchrun of task {task} with {nproc} processes failed (exit {proc.returncode}); "
                           f"full log in {out / TORCHRUN_LOG}; last lines:\n{tail}")
    return read_outcome(out, local_cost(wall, nproc))


def run_in_process(task: str, params, data_root, out_dir, teacher_dir=None, stage1_dir=None) -> TaskOutcome:
    """run_task in this process (compute.nproc == 1)."""
    threads = torch.get_num_threads()
    if params.compute.num_threads:
        torch.set_num_threads(params.compute.num_threads)
    started = time.perf_counter()
    try:
        result = run_task(task, params, data_root, out_dir, teacher_dir=teacher_dir, stage1_dir=stage1_dir)
    finally:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    return TaskOutcome(out, out / "model", list(result["history"]), dict(result["metrics"]),
                       local_cost(time.perf_counter() - started, 1))


def execute(task: str, params, data_root, out_dir, teacher_dir=None, stage1_dir=None, run_id: str = "",
            store=None) -> TaskOutcome:
    """Run one training task on the backend params.compute names; the outputs land in out_dir either way."""
    if task not in TASKS:
        raise BackendError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    for name, value in (("data_root", data_root), ("teacher_dir", teacher_dir), ("stage1_dir", stage1_dir)):
        if value is not None and not Path(value).is_dir():
            raise BackendError(f"{name} {value!r} is not a directory")
    backend = params.compute.backend
    if backend == "local":
        if params.compute.nproc > 1:
            return run_torchrun(task, params, data_root, out_dir, teacher_dir, stage1_dir)
        return run_in_process(task, params, data_root, out_dir, teacher_dir, stage1_dir)
    if backend == "sagemaker":
        from cardlib.train.sagemaker_job import launch  # imports backends: loaded on use

        return launch(task, params, data_root, out_dir, teacher_dir, stage1_dir, run_id,
                      store if store is not None else store_from_params(params))
    raise BackendError(f"unknown compute.backend {backend!r}")

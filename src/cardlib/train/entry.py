"""`python -m cardlib.train.entry --task T ...`: one training task per process (local, torchrun or SageMaker).

Honours SageMaker's training contract: SM_MODEL_DIR, SM_CHANNEL_{DATA,TEACHER,STAGE1,PARAMS} give the defaults,
and hyperparameters (SM_HPS and/or `--key value` arguments) named like `teacher.epochs` become params overrides.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from cardlib.params import ParamsError, load_params
from cardlib.train import ddp
from cardlib.train.tasks import TASKS, run_task

log = logging.getLogger("cardlib.train.entry")

PARAMS_FILE = "params.yaml"  # the one file inside the params channel
OUTPUTS = ("model", "history.json", "metrics.json")  # what a task leaves for the caller (checkpoints stay behind)
# the one hyperparameter that is an argument; every other one is a params override (paths come from SM_* only)
ARGUMENT_HPS = {"task"}


class EntryError(ValueError):
    """Bad command line, environment or inputs; the message says what to fix."""


def _env_dir(name: str, *parts: str) -> Optional[str]:
    value = os.environ.get(name)
    return str(Path(value, *parts)) if value else None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardlib.train.entry", description=__doc__.splitlines()[0],
                                allow_abbrev=False)  # `--teacher.epochs` must never abbreviate `--teacher`
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--params", help=f"params YAML (or a folder holding {PARAMS_FILE}); default $SM_CHANNEL_PARAMS")
    p.add_argument("--data", help="data stage output dir; default $SM_CHANNEL_DATA")
    p.add_argument("--out", help="output dir (model/, history.json, metrics.json); default $SM_MODEL_DIR")
    p.add_argument("--teacher", help="teacher model dir (stage1, stage2); default $SM_CHANNEL_TEACHER")
    p.add_argument("--stage1", help="stage-1 student model dir (stage2); default $SM_CHANNEL_STAGE1")
    p.add_argument("--work", help="dir the task trains in (checkpoints); default --out, or under SageMaker "
                                  "the checkpoints folder beside $SM_MODEL_DIR, so they stay out of model.tar.gz")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="params override (repeatable)")
    return p


def hyperparameter_overrides(hps: dict, extra_argv: Sequence[str]) -> tuple[dict, list[str]]:
    """Split SageMaker hyperparameters (SM_HPS dict, then `--key value` argv pairs) into arguments and overrides."""
    args: dict = {}
    merged: dict[str, str] = {}
    for key, value in hps.items():
        merged[key] = value if isinstance(value, str) else json.dumps(value)
    it = iter(extra_argv)
    for token in it:
        if not token.startswith("--") or len(token) < 3:
            raise EntryError(f"unexpected argument {token!r}: hyperparameters come as --key value")
        key, sep, value = token[2:].partition("=")
        if not sep:
            value = next(it, None)
            if value is None:
                raise EntryError(f"hyperparameter --{key} has no value")
        merged[key] = value
    overrides = []
    for key, value in merged.items():
        if key in ARGUMENT_HPS:
            args[key] = value
        elif "." in key:
            overrides.append(f"{key}={value}")
        else:
            raise EntryError(f"unknown hyperparameter {key!r}: use a params key path like teacher.epochs, "
                             f"or one of {sorted(ARGUMENT_HPS)}")
    return args, overrides


def _sm_hps() -> dict:
    raw = os.environ.get("SM_HPS")
    if not raw:
        return {}
    try:
        hps = json.loads(raw)
    except json.JSONDecodeError as e:
        raise EntryError(f"SM_HPS is not valid JSON: {e}") from None
    if not isinstance(hps, dict):
        raise EntryError("SM_HPS must be a JSON object of hyperparameters")
    return hps


def resolve_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command line + SageMaker environment → one checked namespace (paths, task, overrides)."""
    ns, extra = _parser().parse_known_args(list(argv))
    hp_args, hp_overrides = hyperparameter_overrides(_sm_hps(), extra)
    for key, value in hp_args.items():
        if getattr(ns, key) is None:
            setattr(ns, key, value)
    ns.overrides = hp_overrides + ns.overrides  # explicit --set wins over hyperparameters
    ns.params = ns.params or _env_dir("SM_CHANNEL_PARAMS")
    ns.data = ns.data or _env_dir("SM_CHANNEL_DATA")
    ns.out = ns.out or _env_dir("SM_MODEL_DIR")
    ns.teacher = ns.teacher or _env_dir("SM_CHANNEL_TEACHER")
    ns.stage1 = ns.stage1 or _env_dir("SM_CHANNEL_STAGE1")
    if ns.work is None and os.environ.get("SM_MODEL_DIR") and Path(ns.out) == Path(os.environ["SM_MODEL_DIR"]):
        # SageMaker's local checkpoint folder (/opt/ml/checkpoints beside /opt/ml/model, on the job's volume):
        # epoch checkpoints stay out of model.tar.gz
        ns.work = str(Path(ns.out).parent / "checkpoints")
    ns.work = ns.work or ns.out

    if ns.task not in TASKS:
        raise EntryError(f"--task is required (one of {', '.join(TASKS)}); got {ns.task!r}")
    for name, flag, env in (("params", "--params", "SM_CHANNEL_PARAMS"), ("data", "--data", "SM_CHANNEL_DATA"),
                            ("out", "--out", "SM_MODEL_DIR")):
        if not getattr(ns, name):
            raise EntryError(f"{flag} is required (or set {env})")
    params_path = Path(ns.params)
    if params_path.is_dir():
        params_path = params_path / PARAMS_FILE
    if not params_path.is_file():
        raise EntryError(f"params file not found: {params_path}")
    ns.params = params_path
    if not Path(ns.data).is_dir():
        raise EntryError(f"data dir not found: {ns.data}")
    needs = {"teacher": (), "stage1": ("teacher",), "stage2": ("teacher", "stage1")}[ns.task]
    for name in needs:
        value = getattr(ns, name)
        if not value or not Path(value).is_dir():
            raise EntryError(f"task {ns.task} needs --{name} (a model dir; or SM_CHANNEL_{name.upper()}); "
                             f"got {value!r}")
    return ns


def publish_outputs(work: Path, out: Path) -> None:
    """Copy what the caller needs from the scratch dir to the output dir (rank 0 only)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        src, dst = work / name, out / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, dst)
        else:
            raise FileNotFoundError(f"task output {src} is missing")


def run(ns: argparse.Namespace) -> dict:
    """Load params, run the task into the work dir, publish its outputs to --out."""
    params = load_params(ns.params, ns.overrides)
    if params.compute.num_threads:
        import torch

        torch.set_num_threads(params.compute.num_threads)
    work, out = Path(ns.work), Path(ns.out)
    work.mkdir(parents=True, exist_ok=True)
    result = run_task(ns.task, params, ns.data, work, teacher_dir=ns.teacher, stage1_dir=ns.stage1)
    if ddp.is_main_process() and work.resolve() != out.resolve():
        publish_outputs(work, out)
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    code = 0
    try:
        ns = resolve_args(sys.argv[1:] if argv is None else argv)
    except (EntryError, ParamsError) as e:
        print(f"cardlib.train.entry: error: {e}", file=sys.stderr)
        sys.exit(2)
    if distributed:
        ddp.init_distributed()
    try:
        result = run(ns)
        if ddp.is_main_process():
            log.info("task %s done on %d process(es): %d epoch(s), metrics %s", ns.task, ddp.world_size(),
                     len(result["history"]), json.dumps(result["metrics"]))
    except ParamsError as e:
        print(f"cardlib.train.entry: error: {e}", file=sys.stderr)
        code = 2
    except Exception:
        log.exception("task %s failed on rank %d", ns.task, ddp.rank())
        code = 1
    if distributed:
        ddp.cleanup_and_exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()

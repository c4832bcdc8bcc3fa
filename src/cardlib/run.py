"""Runs: run ids, the run directory, stage.json, inputs hashes, and the StageContext notebooks use."""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from cardlib.params import Params, from_dict, load_params, resolve_paths
from cardlib.store import Layout, Store, atomic_write_text, sha256_file, store_from_params, validate_id

PACKAGE_DIR = Path(__file__).resolve().parent


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id(name: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return validate_id(f"{stamp}-{name}-{secrets.token_hex(2)}", "run id")


def stage_name(notebook: Path | str) -> str:
    return validate_id(Path(notebook).stem, "stage name")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over the package's source (once per process): a code change invalidates cached stages."""
    h = hashlib.sha256()
    for p in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(p.relative_to(PACKAGE_DIR).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def git_commit(cwd: str | Path = ".") -> str:
    """The checkout's commit (with '-dirty' when it has local changes), or 'unknown' outside git."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


class Run:
    """A run directory: params.yaml (resolved), run.json, and one folder per stage with its stage.json."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir).resolve()
        self.run_id = validate_id(self.dir.name, "run id")
        self.params_path = self.dir / "params.yaml"
        if not self.params_path.is_file():
            raise FileNotFoundError(f"{self.dir} is not a run directory (no params.yaml)")
        self.params: Params = from_dict(yaml.safe_load(self.params_path.read_text()) or {})

    @classmethod
    def create(cls, params: Params, runs_dir: str | Path, run_id: Optional[str] = None) -> "Run":
        run_id = validate_id(run_id or new_run_id(params.run.name), "run id")
        d = Path(runs_dir).resolve() / run_id
        d.mkdir(parents=True, exist_ok=False)
        atomic_write_text(d / "params.yaml", yaml.safe_dump(params.to_dict(), sort_keys=False))
        write_json(d / "run.json", {"run_id": run_id, "created_at": utcnow(), "stages": []})
        return cls(d)

    def save_params(self, params: Params) -> None:
        """Replace the run's resolved params (a resume with overrides); changed stages then re-run."""
        atomic_write_text(self.params_path, yaml.safe_dump(params.to_dict(), sort_keys=False))
        self.params = params

    def stage_dir(self, stage: str) -> Path:
        d = self.dir / validate_id(stage, "stage name")
        d.mkdir(parents=True, exist_ok=True)
        return d

    def read_stage(self, stage: str) -> Optional[dict]:
        return read_json(self.dir / stage / "stage.json")

    def write_stage(self, stage: str, record: dict) -> Path:
        return write_json(self.stage_dir(stage) / "stage.json", record)

    def completed_stages(self) -> dict[str, dict]:
        out = {}
        for p in sorted(self.dir.glob("*/stage.json")):
            rec = read_json(p)
            if rec and rec.get("status") == "completed":
                out[p.parent.name] = rec
        return out

    def upstream(self, prefix: str) -> dict:
        """The completed stage.json whose name starts with prefix (e.g. '00' or '01_teacher')."""
        for name, rec in self.completed_stages().items():
            if name.startswith(prefix):
                return rec
        raise FileNotFoundError(f"run {self.run_id}: no completed stage {prefix!r}; run it first")

    def path(self, rel: str) -> Path:
        p = (self.dir / rel).resolve()
        if self.dir not in p.parents and p != self.dir:
            raise ValueError(f"{rel!r} points outside the run directory")
        return p

    def inputs_hash(self, notebook: Path, upstream: list[str]) -> str:
        """Notebook bytes + resolved params + package code + upstream outputs' sha256."""
        h = hashlib.sha256()
        h.update(Path(notebook).read_bytes())
        h.update(self.params.digest().encode())
        h.update(code_digest().encode())
        for name in upstream:
            rec = self.read_stage(name) or {}
            h.update(name.encode())
            h.update(str(rec.get("inputs_hash")).encode())
            for out in sorted((rec.get("outputs") or {}).items()):
                h.update(json.dumps(out, sort_keys=True).encode())
        return h.hexdigest()


def find_cached_stage(runs_dir: Path, stage: str, inputs_hash: str, exclude: Path) -> Optional[Path]:
    """The newest completed stage folder in another run with the same inputs hash."""
    best = None
    for p in Path(runs_dir).glob(f"*/{stage}/stage.json"):
        if p.parent.parent == exclude:
            continue
        rec = read_json(p)
        if rec and rec.get("status") == "completed" and rec.get("inputs_hash") == inputs_hash:
            if best is None or p.stat().st_mtime > best.stat().st_mtime:
                best = p
    return best.parent if best else None


def adopt_stage(src_stage_dir: Path, run: Run) -> dict:
    """Reuse a cached stage from another run: hard-link its files into this run."""
    dst = run.dir / src_stage_dir.name
    if dst.exists():
        shutil.rmtree(dst)

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src_stage_dir, dst, copy_function=link)
    rec = read_json(dst / "stage.json") or {}
    rec["cached_from"] = src_stage_dir.parent.name
    rec["run_id"] = run.run_id
    (dst / "stage.json").unlink()  # a link to the source's file: replace, never edit in place
    run.write_stage(dst.name, rec)
    return rec


class StageContext:
    """What a notebook uses: params, run and stage dirs, store, upstream records, outputs, finish()."""

    def __init__(self, run: Run, stage: str, inputs_hash: str = ""):
        self.run, self.stage, self.inputs_hash = run, stage, inputs_hash
        self.params = run.params
        self.dir = run.stage_dir(stage)
        self.layout = Layout.from_params(self.params)
        self._store: Optional[Store] = None
        self._outputs: dict[str, dict] = {}
        self.model: Optional[dict] = None  # lineage record of the model this stage made, if any
        self._t0, self._cpu0, self.started_at = time.time(), time.process_time(), utcnow()

    @classmethod
    def open(cls, run_dir: str = "", stage: str = "", inputs_hash: str = "",
             params_file: str = "../params/default.yaml", runs_dir: str = "../runs") -> "StageContext":
        """Join the runner's run; interactively (run_dir empty) start a new run from params_file."""
        if not stage:
            raise ValueError("stage is required")
        if run_dir:
            run = Run(run_dir)
        else:  # interactive: params/ sits in the project root, which relative paths in params refer to
            root = Path(params_file).resolve().parent.parent
            run = Run.create(resolve_paths(load_params(params_file), root), runs_dir)
        return cls(run, stage, inputs_hash)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = store_from_params(self.params)
        return self._store

    def upstream(self, prefix: str) -> dict:
        return self.run.upstream(prefix)

    def upstream_path(self, prefix: str, output: str) -> Path:
        rec = self.upstream(prefix)
        try:
            return self.run.path(rec["outputs"][output]["path"])
        except KeyError:
            raise KeyError(f"stage {rec.get('stage')} has no output {output!r}; it has {sorted(rec.get('outputs', {}))}")

    def output(self, name: str, path: str | Path, publish_key: Optional[str] = None) -> dict:
        """Record a file this stage produced (sha256, size); optionally publish it to the store."""
        path = Path(path).resolve()
        rec = {"path": path.relative_to(self.run.dir).as_posix(), "sha256": sha256_file(path),
               "size": path.stat().st_size, "uri": None}
        if publish_key:
            info = self.store.put(path, publish_key)
            if info.sha256 != rec["sha256"]:
                raise RuntimeError(f"published {publish_key} but its sha256 differs from the local file")
            rec["uri"] = info.uri
        self._outputs[name] = rec
        return rec

    def alias_output(self, name: str, existing: str) -> dict:
        """Record an already-recorded output under a second name (e.g. a model's weights as `student_model`)."""
        self._outputs[name] = self._outputs[existing]
        return self._outputs[name]

    def finish(self, metrics: Optional[dict] = None, model: Optional[dict] = None,
               cost: Optional[dict] = None) -> dict:
        cpu = time.process_time() - self._cpu0
        record = {
            "stage": self.stage, "run_id": self.run.run_id, "status": "completed",
            "inputs_hash": self.inputs_hash, "started_at": self.started_at, "finished_at": utcnow(),
            "wall_seconds": round(time.time() - self._t0, 3), "cpu_seconds": round(cpu, 3),
            "outputs": self._outputs, "metrics": metrics or {},
            "model": model if model is not None else self.model, "cost": cost or {"backend": "local", "compute_seconds": round(cpu, 3), "usd": 0.0},
        }
        self.run.write_stage(self.stage, record)
        return record

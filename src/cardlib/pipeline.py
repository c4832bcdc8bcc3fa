"""The runner: papermill executes numbered notebooks, HTML reports are rendered and published per stage."""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cardlib.params import Params, resolve_paths
from cardlib.reports import render_notebook, run_index_html, runs_index_html
from cardlib.run import Run, adopt_stage, find_cached_stage, read_json, stage_name, utcnow, write_json
from cardlib.store import Layout, Store, atomic_write_text, store_from_params

log = logging.getLogger("cardlib.pipeline")
NOTEBOOK_RE = re.compile(r"^(\d\d)_[A-Za-z0-9_-]+\.ipynb$")
KERNEL = "cardlib"


class RunSetupError(ValueError):
    """The run cannot start as asked (selection, missing upstream stage); found before any work."""


class StageFailed(RuntimeError):
    """A notebook failed: names the notebook, the cell and the error."""

    def __init__(self, stage: str, cell: Optional[int], error: str, report: Optional[str]):
        self.stage, self.cell, self.error, self.report = stage, cell, error, report
        where = f"cell {cell}" if cell is not None else "before any cell ran"
        super().__init__(f"stage {stage} failed at {where}: {error}" + (f"\n  report: {report}" if report else ""))


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    index: str  # where the run's index.html was published
    stages: list[dict] = field(default_factory=list)


def discover(notebooks_dir: str | Path) -> list[Path]:
    """Numbered notebooks (NN_name.ipynb) in numeric order."""
    nbs = [p for p in Path(notebooks_dir).glob("*.ipynb") if NOTEBOOK_RE.match(p.name)]
    return sorted(nbs, key=lambda p: p.name)


def select(notebooks: list[Path], from_: Optional[str] = None, only: Optional[list[str]] = None,
           names: Optional[list[str]] = None) -> list[Path]:
    def num(p: Path) -> str:
        return p.name[:2]

    if names:
        notebooks = [p for p in notebooks if p.stem in names or num(p) in names]
    if only:
        wanted = {o.zfill(2) for o in only}
        unknown = wanted - {num(p) for p in notebooks}
        if unknown:
            raise RunSetupError(f"--only {sorted(unknown)}: no such notebook; have {[p.name for p in notebooks]}")
        notebooks = [p for p in notebooks if num(p) in wanted]
    if from_:
        start = from_.zfill(2)
        if start not in {num(p) for p in notebooks}:
            raise RunSetupError(f"--from {from_}: no such notebook; have {[p.name for p in notebooks]}")
        notebooks = [p for p in notebooks if num(p) >= start]
    if not notebooks:
        raise RunSetupError("no notebooks to run")
    return notebooks


def ensure_kernel(name: str = KERNEL) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if name not in KernelSpecManager().find_kernel_specs():
        raise RuntimeError(f"Jupyter kernel {name!r} is not registered; run `make setup` "
                           f"(python -m ipykernel install --sys-prefix --name {name})")


class Publisher:
    """Writes a run's reports to reports/<run_id>/ locally and to analytics/reports/<run_id>/ in the store."""

    def __init__(self, store: Store, reports_dir: Path, run: Run):
        self.store, self.run = store, run
        self.layout = Layout.from_params(run.params)
        self.local = Path(reports_dir).resolve() / run.run_id
        self.local.mkdir(parents=True, exist_ok=True)
        self.prefix = self.layout.run_reports(run.run_id)

    def put_text(self, name: str, text: str) -> str:
        atomic_write_text(self.local / name, text)
        return self.store.put_text(text, f"{self.prefix}/{name}").uri

    def put_file(self, name: str, path: Path) -> str:
        atomic_write_text(self.local / name, path.read_text())
        return self.store.put(path, f"{self.prefix}/{name}").uri

    def stage_reports(self, stage: str, executed: Path) -> dict:
        brief, full = render_notebook(executed)
        self.put_text(f"{stage}.html", brief)
        self.put_text(f"{stage}.full.html", full)
        self.put_file(f"{stage}.ipynb", executed)
        return {"report": f"{stage}.html", "full_report": f"{stage}.full.html", "notebook": f"{stage}.ipynb"}

    def index(self, summary: dict) -> str:
        from cardlib.summary import headline_html  # the stakeholder headline; optional content per stage

        self.put_text("params.yaml", self.run.params_path.read_text())
        self.put_text("run.json", json.dumps(summary, indent=2, default=str))
        uri = self.put_text("index.html", run_index_html(summary, headline_html(self.run)))
        self.runs_index()
        return uri

    def runs_index(self) -> None:
        summaries = []
        for key in self.store.list(self.layout.reports + "/"):
            if key.endswith("/run.json") and key.count("/") == 3:
                try:
                    summaries.append(json.loads(self.store.get_text(key)))
                except (ValueError, OSError):
                    continue  # a run whose summary is unreadable is left out of the listing, not fatal
        text = runs_index_html(summaries)
        self.store.put_text(text, f"{self.layout.reports}/index.html")
        atomic_write_text(self.local.parent / "index.html", text)


def _failure(exc: Exception) -> tuple[Optional[int], str]:
    """(cell number, 'Ename: evalue') from a papermill error."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        return exc.exec_count, f"{exc.ename}: {exc.evalue}"
    return None, f"{type(exc).__name__}: {exc}"


def _failed_cell(executed: Path) -> Optional[int]:
    """Index (1-based, among code cells, parameters included) of the cell that raised."""
    import nbformat

    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:
        return None
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, c in enumerate(code, 1):
        if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
            return i
    return None


def run_pipeline(params: Params, *, notebooks_dir: str | Path = "notebooks", runs_dir: str | Path = "runs",
                 reports_dir: str | Path = "reports", resume: Optional[str] = None, from_: Optional[str] = None,
                 only: Optional[list[str]] = None, kernel: str = KERNEL, progress: bool = True) -> RunResult:
    """Execute the selected notebooks in order; publish reports after each (also a failed one)."""
    notebooks_dir, runs_dir = Path(notebooks_dir).resolve(), Path(runs_dir).resolve()
    params = resolve_paths(params, Path.cwd())  # the kernels run in notebooks/: relative paths would move
    all_nbs = discover(notebooks_dir)
    if not all_nbs:
        raise RunSetupError(f"no numbered notebooks (NN_name.ipynb) in {notebooks_dir}")
    chosen = select(all_nbs, from_, only, params.run.notebooks or None)
    ensure_kernel(kernel)
    store = store_from_params(params)  # region checks and bad URIs fail here, before any work
    store.init(Layout.from_params(params))

    if resume:
        run = Run(runs_dir / resume)
        run.save_params(params)
    else:
        run = Run.create(params, runs_dir)
    pub = Publisher(store, Path(reports_dir), run)
    summary = read_json(run.dir / "run.json") or {"run_id": run.run_id, "created_at": utcnow()}
    summary.update({"params_name": params.run.name, "status": "running"})
    summary["stages"] = [{"stage": stage_name(p), "status": "pending"} for p in all_nbs]
    for rec_name, rec in run.completed_stages().items():
        _set(summary, rec_name, status="completed", wall_seconds=rec.get("wall_seconds"), metrics=rec.get("metrics"))
    _adopt_upstream(run, runs_dir, all_nbs, chosen, summary)
    result = RunResult(run.run_id, run.dir, pub.index(summary))
    print(f"cardlib run {run.run_id}: {len(chosen)} stage(s) → {run.dir}", flush=True)

    for i, nb in enumerate(chosen, 1):
        stage = stage_name(nb)
        upstream = [stage_name(p) for p in all_nbs if p.name < nb.name]
        inputs_hash = run.inputs_hash(nb, upstream)
        prev = run.read_stage(stage)
        executed = run.stage_dir(stage) / f"{stage}.ipynb"
        if prev and prev.get("status") == "completed" and prev.get("inputs_hash") == inputs_hash and executed.is_file():
            print(f"[{i}/{len(chosen)}] {stage}: unchanged inputs, skipped", flush=True)
            _set(summary, stage, status="cached", **pub.stage_reports(stage, executed),
                 wall_seconds=prev.get("wall_seconds"), metrics=prev.get("metrics"))
            continue
        cached = find_cached_stage(runs_dir, stage, inputs_hash, exclude=run.dir)
        if cached is not None and (cached / f"{stage}.ipynb").is_file():
            rec = adopt_stage(cached, run)
            print(f"[{i}/{len(chosen)}] {stage}: unchanged since run {cached.parent.name}, reused", flush=True)
            _set(summary, stage, status="cached", **pub.stage_reports(stage, executed),
                 wall_seconds=rec.get("wall_seconds"), metrics=rec.get("metrics"))
            continue

        print(f"[{i}/{len(chosen)}] {stage}: running", flush=True)
        _set(summary, stage, status="running")
        t0 = time.time()
        error = None
        try:
            _execute(nb, executed, run, stage, inputs_hash, params, notebooks_dir, kernel, progress)
        except Exception as exc:  # the notebook failed: publish its report, then stop the run
            error = exc
        wall = round(time.time() - t0, 3)
        links = pub.stage_reports(stage, executed) if executed.is_file() else {}
        if error is None:
            rec = run.read_stage(stage)
            if not rec or rec.get("inputs_hash") != inputs_hash:  # notebook did not call ctx.finish()
                rec = {"stage": stage, "run_id": run.run_id, "status": "completed", "outputs": {}, "metrics": {},
                       "finished_at": utcnow()}
            rec.update(status="completed", inputs_hash=inputs_hash, wall_seconds=wall)
            run.write_stage(stage, rec)
            _set(summary, stage, status="completed", wall_seconds=wall, metrics=rec.get("metrics"), **links)
            result.index = pub.index(summary)
            print(f"[{i}/{len(chosen)}] {stage}: completed in {wall:.1f} s", flush=True)
            continue
        cell, message = _failure(error)
        cell = _failed_cell(executed) or cell
        run.write_stage(stage, {"stage": stage, "run_id": run.run_id, "status": "failed", "inputs_hash": inputs_hash,
                                "finished_at": utcnow(), "wall_seconds": wall, "outputs": {}, "metrics": {},
                                "error": {"cell": cell, "message": message}})
        _set(summary, stage, status="failed", wall_seconds=wall, error=f"cell {cell}: {message}", **links)
        summary["status"] = "failed"
        result.index = pub.index(summary)
        write_json(run.dir / "run.json", summary)
        raise StageFailed(f"{nb.name}", cell, message, store.uri_for(f"{pub.prefix}/{stage}.html") if links else None)

    summary["status"] = "completed"
    write_json(run.dir / "run.json", summary)
    result.index = pub.index(summary)
    result.stages = summary["stages"]
    return result


def _adopt_upstream(run: Run, runs_dir: Path, all_nbs: list[Path], chosen: list[Path], summary: dict) -> None:
    """Stages before the chosen ones that this run lacks are reused from another run, or refused up front."""
    done = run.completed_stages()
    for nb in all_nbs:
        stage = stage_name(nb)
        if nb in chosen or nb.name > chosen[-1].name or stage in done:
            continue
        upstream = [stage_name(p) for p in all_nbs if p.name < nb.name]
        cached = find_cached_stage(runs_dir, stage, run.inputs_hash(nb, upstream), exclude=run.dir)
        if cached is None:
            raise RunSetupError(f"{chosen[0].name} needs stage {stage} first: run it (drop --only/--from) "
                             f"or --resume a run that has it")
        rec = adopt_stage(cached, run)
        _set(summary, stage, status="cached", wall_seconds=rec.get("wall_seconds"), metrics=rec.get("metrics"))


def _execute(nb: Path, executed: Path, run: Run, stage: str, inputs_hash: str, params: Params,
             notebooks_dir: Path, kernel: str, progress: bool) -> None:
    import papermill as pm

    pm.execute_notebook(
        str(nb), str(executed),
        parameters={"run_dir": str(run.dir), "stage": stage, "inputs_hash": inputs_hash},
        kernel_name=kernel, cwd=str(notebooks_dir), execution_timeout=params.run.cell_timeout_s,
        log_output=True, progress_bar=progress, request_save_on_cell_execute=True,
    )


def _set(summary: dict, stage: str, **fields) -> None:
    for s in summary["stages"]:
        if s["stage"] == stage:
            s.update({k: v for k, v in fields.items() if v is not None})
            if fields.get("status") in ("running", "completed", "cached"):
                s.pop("error", None)
            return

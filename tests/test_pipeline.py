"""The runner on small notebooks made here: parameters injected, reports published, failures, resume."""
import copy
import json
import textwrap
from pathlib import Path

import nbformat
import pytest

from cardlib.cli import main
from cardlib.store import open_store

PARAMS_CELL = 'run_dir = ""\nstage = ""\ninputs_hash = ""'


def _notebook(path: Path, *cells: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS_CELL)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), params]
    nb.cells += [nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells]
    nb.metadata["kernelspec"] = {"name": "cardlib", "display_name": "cardlib", "language": "python"}
    nbformat.write(nb, str(path))


DATA_STAGE = """
# stage code: data
from pathlib import Path
from cardlib.run import StageContext
ctx = StageContext.open(run_dir, stage, inputs_hash)
counter = Path(ctx.run.dir).parent / f"{stage}.executions"
counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
out = ctx.dir / "cards.txt"
out.write_text(f"{stage} n_cards={ctx.params.data.n_cards}")
ctx.output("cards", out, publish_key=f"pipelines/training/{ctx.run.run_id}/cards.txt")
"""
PLOT = """
import matplotlib
matplotlib.use("agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(3, 2)); ax.plot([0, 1], [0, 1]); plt.show()
print("SECRET_CODE_MARKER" if False else "plotted")
"""
FINISH = 'ctx.finish(metrics={"n_cards": ctx.params.data.n_cards})'
TRAIN_STAGE = """
# stage code: train
from pathlib import Path
from cardlib.run import StageContext
ctx = StageContext.open(run_dir, stage, inputs_hash)
counter = Path(ctx.run.dir).parent / f"{stage}.executions"
counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
cards = ctx.upstream_path("00", "cards").read_text()
"""
MAYBE_FAIL = """
if not (Path(ctx.run.dir).parent.parent / "fixed").exists():
    raise ValueError("boom: the flag file is missing")
"""


@pytest.fixture
def workspace(tmp_path, cardlib_kernel):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_data.ipynb", DATA_STAGE, PLOT, FINISH)
    _notebook(nbs / "01_train.ipynb", TRAIN_STAGE, MAYBE_FAIL, 'ctx.finish(metrics={"loss": 0.5})')
    (nbs / "notes.ipynb").write_text((nbs / "00_data.ipynb").read_text())  # not numbered: not a stage
    (tmp_path / "fixed").touch()
    return tmp_path


def _run(ws: Path, store_uri: str, *extra: str) -> int:
    return main(["run", "-p", str(Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"),
                 "--set", f"store.uri={store_uri}", "--set", "data.n_cards=13",
                 "--notebooks", str(ws / "notebooks"), "--runs-dir", str(ws / "runs"),
                 "--reports-dir", str(ws / "reports"), *extra])


def _only_run(ws: Path) -> Path:
    (run_dir,) = [p for p in (ws / "runs").iterdir() if p.is_dir()]
    return run_dir


def _check_published(store, run_id: str, stages: list[str]) -> None:
    prefix = f"analytics/reports/{run_id}"
    for s in stages:
        brief, full = store.get_text(f"{prefix}/{s}.html"), store.get_text(f"{prefix}/{s}.full.html")
        assert "# stage code" in full and "# stage code" not in brief  # code only in the full one
        assert store.exists(f"{prefix}/{s}.ipynb")
    index = store.get_text(f"{prefix}/index.html")
    assert all(f'href="{s}.html"' in index for s in stages)
    assert run_id in store.get_text("analytics/reports/index.html")


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_run_injects_params_and_publishes_reports(workspace, backend, request):
    if backend == "s3":
        store_uri = f"s3://{request.getfixturevalue('s3_bucket')}/project/pokemon-card-recognition"
        extra = ["--set", "store.region=us-east-2"]
    else:
        store_uri, extra = str(workspace / "store"), []
    assert _run(workspace, store_uri, *extra) == 0
    run_dir = _only_run(workspace)
    store = open_store(store_uri, "us-east-2" if backend == "s3" else None)
    _check_published(store, run_dir.name, ["00_data", "01_train"])
    rec = json.loads((run_dir / "00_data" / "stage.json").read_text())
    assert rec["status"] == "completed" and rec["metrics"] == {"n_cards": 13}  # the --set reached the kernel
    assert rec["outputs"]["cards"]["uri"] == store.uri_for(f"pipelines/training/{run_dir.name}/cards.txt")
    assert store.sha256(store.key_for(rec["outputs"]["cards"]["uri"])) == rec["outputs"]["cards"]["sha256"]
    assert rec["wall_seconds"] > 0 and len(rec["inputs_hash"]) == 64
    brief = store.get_text(f"analytics/reports/{run_dir.name}/00_data.html")
    assert "data:image/png;base64" in brief  # the plot is inline: the page is self-contained
    assert (workspace / "reports" / run_dir.name / "00_data.html").is_file()
    assert not (run_dir / "notes").exists()


def test_failing_notebook_stops_names_the_cell_and_still_publishes(workspace, capsys):
    (workspace / "fixed").unlink()
    store_uri = str(workspace / "store")
    assert _run(workspace, store_uri) == 1
    err = capsys.readouterr().err
    assert "01_train.ipynb" in err and "cell 4" in err and "boom: the flag file is missing" in err
    run_dir = _only_run(workspace)
    store = open_store(store_uri)
    prefix = f"analytics/reports/{run_dir.name}"
    assert "boom: the flag file is missing" in store.get_text(f"{prefix}/01_train.full.html")
    index = store.get_text(f"{prefix}/index.html")
    assert "failed" in index and "boom" in index
    failed = json.loads((run_dir / "01_train" / "stage.json").read_text())
    assert failed["status"] == "failed" and failed["error"]["cell"] == 4
    assert (run_dir / "00_data" / "cards.txt").is_file()  # earlier artifacts intact
    assert json.loads((run_dir / "00_data" / "stage.json").read_text())["status"] == "completed"

    # --resume continues from the first incomplete stage; the completed one is not recomputed
    (workspace / "fixed").touch()
    assert _run(workspace, store_uri, "--resume", run_dir.name) == 0
    assert (workspace / "runs" / "00_data.executions").read_text() == "1"
    assert (workspace / "runs" / "01_train.executions").read_text() == "2"
    assert json.loads((run_dir / "01_train" / "stage.json").read_text())["status"] == "completed"
    assert "completed" in store.get_text(f"{prefix}/index.html")


def test_unchanged_stages_are_reused_across_runs_and_changed_ones_rerun(workspace):
    store_uri = str(workspace / "store")
    assert _run(workspace, store_uri) == 0
    assert _run(workspace, store_uri, "--only", "01") == 0  # same inputs → reused
    assert (workspace / "runs" / "01_train.executions").read_text() == "1"
    nb = workspace / "notebooks" / "01_train.ipynb"
    nb.write_text(nb.read_text().replace("0.5", "0.25"))  # the notebook changed → recomputed
    assert _run(workspace, store_uri, "--only", "01", "--only", "00") == 0
    assert (workspace / "runs" / "01_train.executions").read_text() == "2"
    assert (workspace / "runs" / "00_data.executions").read_text() == "1"


def test_bad_params_fail_before_any_work(workspace, capsys):
    assert main(["run", "-p", "params/smoke.yaml", "--set", "teacher.epochs=-1",
                 "--notebooks", str(workspace / "notebooks"), "--runs-dir", str(workspace / "runs")]) == 2
    assert "teacher.epochs" in capsys.readouterr().err
    assert not (workspace / "runs").exists()


def test_relative_store_path_means_the_project_root_not_the_notebooks_folder(workspace, monkeypatch):
    monkeypatch.chdir(workspace)  # the kernels run with cwd=notebooks/; "./store" must still be the root's store
    assert _run(workspace, "./store", "--only", "00") == 0
    run_dir = _only_run(workspace)
    assert (workspace / "store" / "analytics" / "reports" / run_dir.name / "00_data.html").is_file()
    assert (workspace / "store" / "pipelines" / "training" / run_dir.name / "cards.txt").is_file()
    assert not (workspace / "notebooks" / "store").exists()


def test_report_figures_carry_alternative_text(tmp_path):
    import base64
    import io
    import re

    from PIL import Image

    from cardlib.reports import render_notebook

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 30)).save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    figure = nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Report\n\n## Found rate by photo factor\n\ntext"),
                nbformat.v4.new_code_cell("plot()", outputs=[figure]),
                nbformat.v4.new_code_cell("plot()", outputs=[copy.deepcopy(figure)],
                                          metadata={"alt": "Top-1 against gallery size"})]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    for page in render_notebook(path):
        alts = re.findall(r'<img[^>]*\balt="([^"]*)"[^>]*>', page)
        assert alts == ["Figure: Found rate by photo factor", "Top-1 against gallery size"]
        assert len(re.findall(r"<img\b", page)) == 2 and png in page

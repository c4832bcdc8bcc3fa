"""Rendering: executed notebooks to HTML (stakeholder and full), and the run / runs index pages."""
from __future__ import annotations

import copy
import html
from pathlib import Path

import nbformat

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde2ea;padding-bottom:.3rem}
.sub{color:#5b6475;margin-top:0} table{border-collapse:collapse;width:100%;margin:.8rem 0;font-size:.92rem}
th,td{border-bottom:1px solid #e6e9ef;padding:.45rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f6fa;font-weight:600} .completed,.cached,.pass{color:#137333;font-weight:600}
.failed,.fail{color:#b3261e;font-weight:600} .running,.pending{color:#8a5a00;font-weight:600}
.err{background:#fdecea;border-left:4px solid #b3261e;padding:.6rem .8rem;white-space:pre-wrap;font-family:monospace;font-size:.85rem}
.metric{font-family:monospace;font-size:.85rem;color:#34405a} a{color:#1a56c4}
"""


def _stakeholder_copy(nb):
    """Drop the parameter cells and stderr streams (progress bars, logs): the reader wants results."""
    nb = copy.deepcopy(nb)
    keep = []
    for cell in nb.cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & {"parameters", "injected-parameters", "hide"}:
            continue
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        keep.append(cell)
    nb.cells = keep
    return nb


def _heading(md: str) -> str | None:
    """The last Markdown heading in a cell's source, without its #s."""
    lines = [ln.lstrip("#").strip() for ln in md.splitlines() if ln.startswith("#")]
    return lines[-1] if lines else None


def _described_figures(nb):
    """A copy whose PNG figures carry alternative text for screen readers (the HTML templates leave it out): the
    cell's `alt` metadata where a notebook sets one, else the heading of the section the figure sits in."""
    nb = copy.deepcopy(nb)
    section = None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            section = _heading(cell.source) or section
            continue
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png") if out.get("output_type") in ("display_data",
                                                                                    "execute_result") else None
            if png:
                alt = cell.get("metadata", {}).get("alt") or (f"Figure: {section}" if section else "Figure")
                src = "".join(png).replace("\n", "")  # base64, as a string or a list of lines
                out["data"] = {"text/html": f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{src}">'}
    return nb


def render_notebook(nb_path: str | Path) -> tuple[str, str]:
    """(stakeholder HTML without code, full HTML with code); both self-contained (images inline, described)."""
    from nbconvert import HTMLExporter

    nb = _described_figures(nbformat.read(str(nb_path), as_version=4))
    full = HTMLExporter(template_name="lab")
    brief = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                         exclude_output_prompt=True)
    return brief.from_notebook_node(_stakeholder_copy(nb))[0], full.from_notebook_node(nb)[0]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _metrics_cell(metrics: dict, limit: int = 8) -> str:
    items = [(k, v) for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool))][:limit]
    return "<br>".join(f'<span class="metric">{html.escape(k)} = {_fmt(v)}</span>' for k, v in items)


def run_index_html(summary: dict, headline_html: str = "") -> str:
    """One self-contained page per run: stage, status, duration, key metrics, links."""
    rows = []
    for s in summary.get("stages", []):
        name = html.escape(s["stage"])
        links = " · ".join(f'<a href="{html.escape(s[k])}">{label}</a>' for k, label in
                           (("report", "report"), ("full_report", "with code"), ("notebook", "notebook")) if s.get(k))
        err = f'<div class="err">{html.escape(s["error"])}</div>' if s.get("error") else ""
        dur = f"{s['wall_seconds']:.1f} s" if isinstance(s.get("wall_seconds"), (int, float)) else ""
        rows.append(f"<tr><td>{name}</td><td class=\"{html.escape(s['status'])}\">{html.escape(s['status'])}</td>"
                    f"<td>{dur}</td><td>{_metrics_cell(s.get('metrics', {}))}{err}</td><td>{links}</td></tr>")
    status = html.escape(summary.get("status", "running"))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>cardlib run {html.escape(summary['run_id'])}</title>
<style>{CSS}</style></head><body>
<h1>cardlib run {html.escape(summary['run_id'])}</h1>
<p class="sub">status <span class="{status}">{status}</span> · started {html.escape(str(summary.get('created_at', '')))}
· params {html.escape(str(summary.get('params_name', '')))}</p>
{headline_html}
<h2>Stages</h2>
<table><tr><th>stage</th><th>status</th><th>duration</th><th>key metrics</th><th>reports</th></tr>
{''.join(rows)}</table>
<p class="sub"><a href="params.yaml">resolved params</a> · <a href="../index.html">all runs</a></p>
</body></html>"""


def runs_index_html(summaries: list[dict]) -> str:
    rows = []
    for s in sorted(summaries, key=lambda s: s.get("created_at", ""), reverse=True):
        rid = html.escape(s["run_id"])
        done = sum(1 for st in s.get("stages", []) if st["status"] in ("completed", "cached"))
        status = html.escape(s.get("status", "running"))
        rows.append(f'<tr><td><a href="{rid}/index.html">{rid}</a></td><td class="{status}">{status}</td>'
                    f"<td>{done}/{len(s.get('stages', []))}</td><td>{html.escape(str(s.get('created_at', '')))}</td></tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>cardlib runs</title><style>{CSS}</style></head>
<body><h1>cardlib runs</h1><table><tr><th>run</th><th>status</th><th>stages done</th><th>started</th></tr>
{''.join(rows)}</table></body></html>"""

"""The stakeholder headline at the top of a run's index page: numbers, the model comparison, the key plots."""
from __future__ import annotations

import base64
import html

from cardlib.run import Run

SUMMARY_PREFIX = "summary_"  # evaluation outputs named summary_* are shown on the index page


def save_summary_assets(ctx, table, figures: dict) -> None:
    """Write the comparison table (HTML) and key figures (PNG) that the index page inlines."""
    path = ctx.dir / "summary_table.html"
    path.write_text(table.to_html(float_format=lambda v: f"{v:.3f}", na_rep="–", border=0))
    ctx.output(f"{SUMMARY_PREFIX}table", path)
    for name, fig in figures.items():
        png = ctx.dir / f"summary_{name}.png"
        fig.savefig(png, dpi=90, bbox_inches="tight")
        ctx.output(f"{SUMMARY_PREFIX}plot_{name}", png)


def _fmt(key: str, value) -> str:
    if isinstance(value, float) and "top-1" in key and 0.0 <= value <= 1.0:
        return f"{100 * value:.1f} %"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = html.escape(str(value))
    if text in ("PASS", "FAIL"):
        return f'<span class="{text.lower()}">{text}</span>'
    return text


def headline_html(run: Run) -> str:
    """Headline, comparison table and key plots once the evaluation stage has completed; empty before."""
    try:
        rec = run.upstream("06")
    except FileNotFoundError:
        return ""
    head = (rec.get("metrics") or {}).get("headline") or {}
    if not head:
        return ""
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(k, v)}</td></tr>" for k, v in head.items())
    parts = [f"<h2>Headline</h2><table>{cells}</table>"]
    outputs = rec.get("outputs") or {}
    if f"{SUMMARY_PREFIX}table" in outputs:
        parts.append("<h2>Model comparison</h2>" + run.path(outputs[f"{SUMMARY_PREFIX}table"]["path"]).read_text())
    plots = [o for name, o in sorted(outputs.items()) if name.startswith(f"{SUMMARY_PREFIX}plot_")]
    if plots:
        imgs = "".join(
            f'<img alt="{html.escape(o["path"])}" style="max-width:48%;margin:0.5%" src="data:image/png;base64,'
            f'{base64.b64encode(run.path(o["path"]).read_bytes()).decode()}">' for o in plots)
        parts.append(f"<h2>Key plots</h2><div>{imgs}</div>")
    return "\n".join(parts)

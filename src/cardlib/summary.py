"""The stakeholder headline at the top of a run's index page, from the evaluation stage's metrics."""
from __future__ import annotations

import html

from cardlib.run import Run


def headline_html(run: Run) -> str:
    """Headline numbers when an evaluation stage has completed; empty before that."""
    try:
        rec = run.upstream("06")
    except FileNotFoundError:
        return ""
    head = (rec.get("metrics") or {}).get("headline") or {}
    if not head:
        return ""
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in head.items())
    return f"<h2>Headline</h2><table>{cells}</table>"

"""Store documents derived from a published run: experiments index, dashboards, pipeline records, README."""
from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path

import yaml

from cardlib.registry.manifest import ProjectManifest
from cardlib.registry.publish import ensure_copy, ensure_file, stage_list
from cardlib.store import Layout, ObjectInfo, Store, validate_id

SCHEMA_VERSION = 1


class ArtifactError(RuntimeError):
    """A store document cannot be written from what the run produced."""


def _json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- experiments index

def experiments_index(params, store: Store, run_id: str) -> dict:
    """Experiments and their MLflow runs for this run id (the document verify compares with MLflow)."""
    from cardlib import tracking

    runs = tracking.runs_for(params, store, run_id)
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id, "generated_at": _now(),
            "experiments": {name: sorted(rs, key=lambda r: r["run_id"]) for name, rs in sorted(runs.items())}}


def write_experiments_index(store: Store, params, run_id: str, layout: Layout = Layout()) -> ObjectInfo:
    return store.put_text(_json(experiments_index(params, store, run_id)), layout.experiments_index)


# ---------------------------------------------------------------- dashboards

def _scalars(d: dict) -> dict:
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def dashboard_config(manifest: ProjectManifest, stages) -> dict:
    """Training overview (per stage), model comparison (per model), cost tracking (per stage and total)."""
    stages = stage_list(stages)
    overview = [{"stage": s["stage"], "status": s["status"], "wall_seconds": s.get("wall_seconds"),
                 "cpu_seconds": s.get("cpu_seconds"), "started_at": s.get("started_at"),
                 "finished_at": s.get("finished_at"), "metrics": _scalars(s.get("metrics"))} for s in stages]
    models = [{"model": m.id, "kind": m.kind, "version": m.version, "parent": m.parent,
               "size_bytes": sum(f.size for f in m.files), "files": len(m.files), "cost_usd": m.cost_usd,
               "metrics": _scalars(m.metrics)} for m in manifest.models.values()]
    costs = [{"stage": s["stage"], **{k: s["cost"].get(k) for k in ("backend", "instance_type", "compute_seconds",
                                                                      "billable_seconds", "usd", "job_name")}}
             for s in stages if s.get("cost")]
    return {"schema_version": SCHEMA_VERSION, "run_id": manifest.run_id, "generated_at": _now(),
            "dashboards": {
                "training_overview": {"title": "Training overview", "rows": overview},
                "model_comparison": {"title": "Model comparison", "rows": models,
                                     "metrics": sorted({k for m in models for k in m["metrics"]})},
                "cost_tracking": {"title": "Cost tracking", "rows": costs,
                                  "total_usd": round(sum(c["usd"] or 0.0 for c in costs), 6)}}}


def _bars(title: str, items: list[tuple[str, float]], unit: str) -> str:
    """An inline SVG horizontal bar chart (no external assets)."""
    items = [(label, float(v or 0.0)) for label, v in items]
    if not items:
        return ""
    top, row, width = max(v for _, v in items) or 1.0, 22, 360
    rows = "".join(
        f'<text x="0" y="{i * row + 15}">{html.escape(label)}</text>'
        f'<rect x="180" y="{i * row + 4}" width="{max(1.0, width * v / top):.1f}" height="14" fill="#4a7bd0"/>'
        f'<text x="{186 + width * v / top:.1f}" y="{i * row + 15}">{v:,.3g} {html.escape(unit)}</text>'
        for i, (label, v) in enumerate(items))
    return (f'<h3>{html.escape(title)}</h3><svg xmlns="http://www.w3.org/2000/svg" width="660" '
            f'height="{len(items) * row + 6}" font-size="12" font-family="sans-serif">{rows}</svg>')


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if isinstance(v, dict):
            v = ", ".join(f"{k}={x:.4g}" if isinstance(x, float) else f"{k}={x}" for k, x in v.items())
        return html.escape("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_dashboard_html(config: dict) -> str:
    d = config["dashboards"]
    ov, mc, ct = d["training_overview"], d["model_comparison"], d["cost_tracking"]
    parts = [
        f"<h2>{ov['title']}</h2>", _table(ov["rows"], ["stage", "status", "wall_seconds", "cpu_seconds", "metrics"]),
        _bars("Wall time per stage", [(r["stage"], r["wall_seconds"]) for r in ov["rows"]], "s"),
        f"<h2>{mc['title']}</h2>", _table(mc["rows"], ["model", "kind", "version", "parent", "size_bytes",
                                                        "cost_usd", "metrics"]),
        _bars("Model size", [(r["model"], r["size_bytes"] / 1e6) for r in mc["rows"]], "MB"),
        f"<h2>{ct['title']}</h2>", _table(ct["rows"], ["stage", "backend", "instance_type", "compute_seconds",
                                                        "billable_seconds", "usd"]),
        f"<p><b>Total: ${ct['total_usd']:.2f}</b></p>",
        _bars("Cost per stage", [(r["stage"], r["usd"]) for r in ct["rows"]], "USD")]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1000px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}th{background:#eef}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>cardlib run {html.escape(config['run_id'])}"
            f"</title><style>{style}</style></head><body><h1>cardlib run {html.escape(config['run_id'])}</h1>"
            f"<p>generated {html.escape(config['generated_at'])}</p>{''.join(parts)}</body></html>\n")


def write_dashboard(store: Store, manifest: ProjectManifest, stages, layout: Layout = Layout()) -> list[ObjectInfo]:
    config = dashboard_config(manifest, stages)
    return [store.put_text(_json(config), f"{layout.dashboards}/dashboard_config.json"),
            store.put_text(render_dashboard_html(config), f"{layout.dashboards}/dashboard.html")]


# ---------------------------------------------------------------- pipelines

def write_training_pipeline(store: Store, params, stages, run_id: str, layout: Layout = Layout()) -> list[ObjectInfo]:
    """pipelines/training/<run_id>/: the resolved params and the notebooks the run executed."""
    prefix = f"{layout.pipeline('training')}/{validate_id(run_id, 'run id')}"
    notebooks = [{"stage": s["stage"], "notebook": f"{s['stage']}.ipynb", "status": s["status"],
                  "inputs_hash": s.get("inputs_hash"), "started_at": s.get("started_at"),
                  "finished_at": s.get("finished_at"), "wall_seconds": s.get("wall_seconds")}
                 for s in stage_list(stages)]
    return [store.put_text(yaml.safe_dump(params.to_dict(), sort_keys=False), f"{prefix}/params.yaml"),
            store.put_text(_json({"run_id": run_id, "notebooks": notebooks}), f"{prefix}/notebooks.json")]


def write_deployment_bundle(store: Store, manifest: ProjectManifest, run_dir: str | Path, stages,
                            layout: Layout = Layout()) -> list[ObjectInfo]:
    """pipelines/deployment/<hailo ver>/: the edge model (HEF or INT8 ONNX), gallery files, deployment.json."""
    hailo = manifest.models.get("hailo")
    if hailo is None:
        raise ArtifactError("the manifest has no hailo model; nothing to bundle for deployment")
    prefix = f"{layout.pipeline('deployment')}/{hailo.version}"
    model = [ensure_copy(store, f.uri, f"{prefix}/{f.name}", f.sha256) for f in hailo.files
             if f.key.startswith(layout.hailo + "/")]
    gallery = []
    for s in stage_list(stages):
        for name, out in s["outputs"].items():
            if not name.startswith("gallery"):
                continue
            local = Path(run_dir) / out["path"]
            if not local.exists():
                raise ArtifactError(f"gallery output {name!r} of stage {s['stage']!r}: {local} does not exist")
            if local.is_dir():
                gallery += [ensure_file(store, p, f"{prefix}/gallery/{p.relative_to(local).as_posix()}")
                            for p in sorted(local.rglob("*")) if p.is_file()]
            else:
                gallery.append(ensure_file(store, local, f"{prefix}/gallery/{local.name}", out.get("sha256")))
    meta = {"run_id": manifest.run_id, "model": {"id": hailo.id, "version": hailo.version, "parent": hailo.parent,
                                                  "config": hailo.config},
            "files": [o.to_dict() for o in model], "gallery": [o.to_dict() for o in gallery],
            "created_at": _now()}
    return model + gallery + [store.put_text(_json(meta), f"{prefix}/deployment.json")]


# ---------------------------------------------------------------- README

def readme_text(manifest: ProjectManifest) -> str:
    """The store's README: what each model is, how to fetch it, what it cost."""
    s3 = manifest.store_uri.startswith("s3://")
    lines = [f"# {manifest.project} — project store", "",
             f"Generated by cardlib from run `{manifest.run_id}` (commit `{manifest.git_commit or 'unknown'}`) "
             f"at {manifest.created_at.isoformat(timespec='seconds')}.",
             "Every file below is in this store with the listed size and sha256; "
             f"`cardlib verify --store {manifest.store_uri}` re-checks each byte.", "",
             "## Models", "", "| model | kind | version | parent | files | size (MB) | cost (USD) |",
             "|---|---|---|---|---|---|---|"]
    for m in manifest.models.values():
        lines.append(f"| {m.id} | {m.kind} | {m.version} | {m.parent or '—'} | {len(m.files)} | "
                     f"{sum(f.size for f in m.files) / 1e6:.2f} | {m.cost_usd:.2f} |")
    for m in manifest.models.values():
        lines += ["", f"### {m.id} ({m.kind} {m.version})", "",
                  f"Lineage: {' → '.join(_lineage(manifest, m.id))}. Stages: {', '.join(m.stages)}."]
        if _scalars(m.metrics):
            lines.append("Metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in _scalars(m.metrics).items()) + ".")
        lines += ["", "| file | size (bytes) | sha256 |", "|---|---|---|"]
        lines += [f"| `{f.key}` | {f.size} | `{f.sha256}` |" for f in m.files]
        lines += ["", "```bash"]
        for f in m.files:
            if s3:
                lines.append(f"aws s3 cp {f.uri} ./{f.name}")
            lines.append(f"cardlib store get {f.key} ./{f.name} --store {manifest.store_uri}")
        lines.append("```")
    lines += ["", "## Cost summary", "", "| model | stage | backend | instance | compute (s) | USD |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {m.id} | {c.stage} | {c.backend} | {c.instance_type or '—'} | {c.compute_seconds:.0f} "
              f"| {c.usd:.2f} |" for m in manifest.models.values() for c in m.cost]
    lines += ["", f"**Total: ${manifest.total_cost_usd:.2f}**", ""]
    return "\n".join(lines)


def _lineage(manifest: ProjectManifest, mid: str) -> list[str]:
    chain, seen = [], set()
    while mid and mid not in seen:
        seen.add(mid)
        chain.append(mid)
        mid = manifest.models[mid].parent
    return list(reversed(chain))


def write_readme(store: Store, manifest: ProjectManifest) -> ObjectInfo:
    return store.put_text(readme_text(manifest), "README.md")


def write_all(store: Store, layout: Layout, params, run_dir: str | Path, stages,
              manifest: ProjectManifest) -> dict[str, list[ObjectInfo]]:
    """Every derived document; the deployment bundle only when the run produced a Hailo model."""
    out = {"experiments_index": [write_experiments_index(store, params, manifest.run_id, layout)],
           "dashboard": write_dashboard(store, manifest, stages, layout),
           "training_pipeline": write_training_pipeline(store, params, stages, manifest.run_id, layout),
           "readme": [write_readme(store, manifest)]}
    if "hailo" in manifest.models:
        out["deployment"] = write_deployment_bundle(store, manifest, run_dir, stages, layout)
    return out

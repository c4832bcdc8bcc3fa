"""The one place that knows MLflow: tracking URI, per-stage experiments, runs tagged with the run id."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EXPERIMENTS = {"teacher": "teacher", "stage1": "student-stage1", "stage2": "student-stage2"}
RUN_ID_TAG = "cardlib.run_id"


def tracking_uri(params, store) -> str:
    """params.tracking.uri, else a sqlite file beside a local store (in cardlib's cache for a remote store)."""
    if params.tracking.uri:
        return params.tracking.uri
    import hashlib

    from cardlib.store import LocalStore, cache_dir

    if isinstance(store, LocalStore):
        db = store.root.parent / f"{store.root.name}-mlflow.db"
    else:
        db = cache_dir("mlflow", f"{hashlib.sha256(store.uri.encode()).hexdigest()[:12]}.db")
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db.resolve().as_posix()}"


def artifact_root(store) -> str:
    """MLflow artifacts live in the store under experiments/mlflow/."""
    from cardlib.store import Layout, LocalStore

    uri = store.uri_for(Layout().mlflow_artifacts)
    return Path(uri).as_uri() if isinstance(store, LocalStore) else uri


def configure(params, store) -> str:
    import mlflow

    uri = tracking_uri(params, store)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_name(params, key: str) -> str:
    if key not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {key!r}; known: {sorted(EXPERIMENTS)}")
    return f"{params.tracking.experiment_prefix}{EXPERIMENTS[key]}"


def ensure_experiment(params, store, key: str) -> str:
    """Create the experiment (artifacts in the store) if missing; returns its id."""
    import mlflow

    configure(params, store)
    name = experiment_name(params, key)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=f"{artifact_root(store)}/{EXPERIMENTS[key]}")


@contextmanager
def stage_run(params, store, key: str, run_id: str, log_params: dict | None = None) -> Iterator:
    """An MLflow run in the stage's experiment, tagged with the cardlib run id."""
    import mlflow

    exp_id = ensure_experiment(params, store, key)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_id, tags={RUN_ID_TAG: run_id}) as run:
        if log_params:
            mlflow.log_params({k: str(v)[:500] for k, v in _flatten(log_params).items()})
        yield run


def runs_for(params, store, run_id: str) -> dict[str, list[dict]]:
    """Experiments and their runs for one cardlib run id (for the experiments index and verify)."""
    import mlflow

    configure(params, store)
    out: dict[str, list[dict]] = {}
    for key in EXPERIMENTS:
        exp = mlflow.get_experiment_by_name(experiment_name(params, key))
        if exp is None:
            continue
        runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'",
                                  output_format="list")
        out[exp.name] = [{"run_id": r.info.run_id, "status": r.info.status, "metrics": dict(r.data.metrics),
                          "artifact_uri": r.info.artifact_uri} for r in runs]
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out

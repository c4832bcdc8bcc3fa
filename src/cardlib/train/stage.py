"""A training stage as a notebook sees it: inputs from upstream stages, the backend, MLflow, store, lineage."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cardlib import tracking

# task → (model id in the manifest, MLflow experiment key, profiling folder, parent model id)
MODELS = {
    "teacher": ("teacher", "teacher", "teacher", None),
    "stage1": ("student_stage1", "stage1", "student_stage1", "teacher"),
    "stage2": ("student_stage2", "stage2", "student_stage2", "student_stage1"),
}
MODEL_OUTPUT = {"teacher": ("01", "teacher_model"), "stage1": ("02", "student_model"),
                "stage2": ("03", "student_model")}


@dataclass
class TrainedStage:
    task: str
    model_dir: Path
    history: list[dict]
    metrics: dict
    cost: dict
    mlflow_run_id: str
    profile: dict

    def load(self):
        """The trained model (eval mode, CPU)."""
        from cardlib.models.student import load_student
        from cardlib.models.teacher import load_teacher

        return load_teacher(self.model_dir) if self.task == "teacher" else load_student(self.model_dir)


def data_root(ctx) -> Path:
    return ctx.upstream_path("00", "manifest").parent


def model_dir_of(ctx, task: str) -> Path:
    """The saved model folder of an upstream training stage ('teacher', 'stage1', 'stage2')."""
    prefix, output = MODEL_OUTPUT[task]
    return ctx.upstream_path(prefix, output).parent


def store_prefix(ctx, task: str) -> str:
    lay = ctx.layout
    return {"teacher": lay.teacher("pytorch"), "stage1": lay.stage1, "stage2": lay.stage2}[task]


def section(params, task: str):
    return {"teacher": params.teacher, "stage1": params.distill.stage1, "stage2": params.distill.stage2}[task]


def train_stage(ctx, task: str) -> TrainedStage:
    """Run the task on the configured backend, log to MLflow, publish the model, profile it."""
    from cardlib.train.backends import execute

    params = ctx.params
    teacher_dir = model_dir_of(ctx, "teacher") if task in ("stage1", "stage2") else None
    stage1_dir = model_dir_of(ctx, "stage1") if task == "stage2" else None
    outcome = execute(task, params, data_root(ctx), ctx.dir / task, teacher_dir=teacher_dir, stage1_dir=stage1_dir,
                      run_id=ctx.run.run_id, store=ctx.store)
    model_id, exp_key, prof_dir, parent = MODELS[task]
    config = section(params, task).model_dump(mode="json")
    with tracking.stage_run(params, ctx.store, exp_key, ctx.run.run_id, log_params=config) as run:
        import mlflow

        for rec in outcome.history:
            mlflow.log_metrics({k: float(v) for k, v in rec.items() if isinstance(v, (int, float)) and k != "epoch"},
                               step=int(rec["epoch"]))
        mlflow.log_metrics({k: float(v) for k, v in outcome.metrics.items() if isinstance(v, (int, float))})
        mlflow.log_dict({"history": outcome.history, "metrics": outcome.metrics, "cost": outcome.cost},
                        "training_summary.json")
        mlflow_run_id = run.info.run_id

    files = []
    for path in sorted(p for p in Path(outcome.model_dir).rglob("*") if p.is_file()):
        name = f"{task}_{path.relative_to(outcome.model_dir).as_posix().replace('/', '_')}"
        ctx.output(name, path, publish_key=f"{store_prefix(ctx, task)}/{path.relative_to(outcome.model_dir).as_posix()}")
        files.append(name)
    # the weights file is the stage's model output (its folder is what downstream stages load)
    weights = next(f for f in files if f.endswith(".safetensors") and "head" not in f)
    ctx.alias_output(MODEL_OUTPUT[task][1], weights)
    ctx.output("history", Path(outcome.out_dir) / "history.json")

    profile = profile_saved(task, outcome.model_dir, params)
    prof_path = ctx.dir / "profile.json"
    prof_path.write_text(json.dumps(profile, indent=2))
    ctx.output("profile", prof_path, publish_key=f"{ctx.layout.profiling(prof_dir)}/{ctx.run.run_id}.json")

    ctx.model = {"id": model_id, "version": _version(ctx, task), "parent": parent, "files": files,
                 "config": config, "mlflow_run_id": mlflow_run_id}
    return TrainedStage(task, Path(outcome.model_dir), outcome.history, outcome.metrics, outcome.cost,
                        mlflow_run_id, profile)


def _version(ctx, task: str) -> str:
    return section(ctx.params, task).version


def profile_saved(task: str, model_dir: Path, params, batch_sizes=(1, 32)) -> dict:
    """Params, forward GFLOPs, latency at batch 1 and 32 on this CPU, peak memory, file size."""
    from cardlib.models.student import load_student
    from cardlib.models.teacher import load_teacher
    from cardlib.profiling import profile_model

    model = load_teacher(model_dir) if task == "teacher" else load_student(model_dir)
    h, w = params.data.input_size
    return profile_model(model, (3, h, w), batch_sizes=batch_sizes, path=model_dir)


def load_model(ctx, task: str):
    """The trained model of an upstream stage, ready to embed (eval mode, CPU)."""
    from cardlib.models.student import load_student
    from cardlib.models.teacher import load_teacher

    d = model_dir_of(ctx, task)
    return load_teacher(d) if task == "teacher" else load_student(d)


def retention(student: dict, teacher: dict, split: str = "test") -> dict:
    """Student top-1 / teacher top-1 on seen and novel cards."""
    out = {}
    for tag in ("seen", "novel"):
        s, t = student.get(f"{split}_top1_{tag}"), teacher.get(f"{split}_top1_{tag}")
        if s is not None and t:
            out[f"retention_{tag}"] = s / t
    return out


def history_frame(history: list[dict]):
    import pandas as pd

    return pd.DataFrame(history).set_index("epoch") if history else pd.DataFrame()


def cost_summary(cost: dict, profile: Optional[dict] = None) -> dict:
    out = {k: v for k, v in cost.items() if v is not None}
    if profile:
        out["params"] = profile.get("params")
        out["gflops_per_image"] = round(profile.get("gflops_per_image", 0.0), 4)
    return out


def retrieval_examples(ctx, model, n: int = 4, k: int = 5, split: str = "test"):
    """A figure: n test photos (seen and novel cards) and the model's top-k reference cards, truth in green."""
    import numpy as np
    import torch

    from cardlib.data.build import rows_for
    from cardlib.data.datasets import read_rgb
    from cardlib.plots import image_grid
    from cardlib.train.retrieval import embed
    from cardlib.train.tasks import RunData

    data = RunData.load(data_root(ctx), ctx.params.data.input_size)
    rows = (rows_for(data.rows, split, False)[: (n + 1) // 2] + rows_for(data.rows, split, True)[: n // 2])[:n]
    gallery, _ = embed(model, data.references())
    crops = data.crops(split)
    index = {r["photo_id"]: i for i, r in enumerate(crops.rows)}
    with torch.inference_mode():
        q = model(torch.stack([crops[index[r["photo_id"]]][0] for r in rows])).numpy()
    top = np.argsort(-(q @ gallery.T), axis=1)[:, :k]
    ids = data.catalogue.ids
    images, titles = [], []
    for r, cand in zip(rows, top):
        images.append(read_rgb(data.root / r["crop"]))
        titles.append(f"photo of {r['card_id']}" + (" (novel)" if r["novel"] else ""))
        for j in cand:
            images.append(data.catalogue.image(ids[j]))
            titles.append(("✓ " if ids[j] == r["card_id"] else "✗ ") + ids[j])
    fig = image_grid([_fit(im, images[0].shape[:2]) for im in images], titles, ncols=k + 1, cell=1.6)
    for ax, t in zip(fig.axes, titles):
        ax.title.set_color("#137333" if t.startswith("✓") else "#b3261e" if t.startswith("✗") else "black")
    return fig


def _fit(img, hw):
    import cv2

    return cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def student_report(ctx, trained: TrainedStage, teacher_metrics: dict, previous: Optional[tuple] = None) -> dict:
    """Teacher vs student (symmetric and asymmetric) top-1 on seen/novel test photos, and retention."""
    import pandas as pd

    from cardlib.train.retrieval import embed
    from cardlib.train.tasks import RunData, retrieval_metrics

    data = RunData.load(data_root(ctx), ctx.params.data.input_size)
    teacher_gallery, _ = embed(load_model(ctx, "teacher"), data.references())
    asym = retrieval_metrics(trained.load(), data, "test", gallery_emb=teacher_gallery)
    sym = {k: v for k, v in trained.metrics.items() if k.startswith("test_")}
    rows = {"teacher": teacher_metrics}
    if previous:
        rows[previous[0]] = previous[1]
    rows["student (symmetric)"] = sym
    rows["student photo → teacher gallery"] = asym
    cols = {"top-1 seen": "test_top1_seen", "top-1 novel": "test_top1_novel",
            "top-5 seen": "test_top5_seen", "top-5 novel": "test_top5_novel"}
    table = pd.DataFrame({name: {c: m.get(k) for c, k in cols.items()} for name, m in rows.items()}).T
    ret = retention(sym, teacher_metrics)
    ret_asym = {f"asymmetric_{k}": v for k, v in retention(asym, teacher_metrics).items()}
    table["retention seen"] = [retention(m, teacher_metrics).get("retention_seen") for m in rows.values()]
    table["retention novel"] = [retention(m, teacher_metrics).get("retention_novel") for m in rows.values()]
    metrics = {**ret, **ret_asym, **{f"asymmetric_{k}": v for k, v in asym.items()}}
    return {"table": table.round(3), "metrics": metrics}

"""The three training tasks (teacher, stage 1, stage 2) as functions of (params, data dir, output dir).

Every execution backend runs these same functions: in-process, under torchrun (DDP), or inside a SageMaker
training job (`python -m cardlib.train.entry`). Outputs: `<out>/model/`, `history.json`, `metrics.json`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from cardlib.data.build import CATALOGUE, load_manifest, rows_for
from cardlib.data.catalogue import Catalogue
from cardlib.data.datasets import (CropDataset, GroupedBatchSampler, PairDataset, ReferenceDataset,
                                   SimulatedCropDataset, default_labels)
from cardlib.models.student import build_student, load_student, save_student
from cardlib.models.teacher import build_teacher, load_teacher, save_teacher
from cardlib.preprocess import Preprocess
from cardlib.train import ddp
from cardlib.train.distill import (CachedTargets, WithTeacherRef, cosine_agreement, distill_stage1, distill_stage2,
                                   teacher_targets)
from cardlib.train.loop import History, TrainConfig, resolve_device
from cardlib.train.retrieval import Turned, embed, retrieval_topk
from cardlib.train.teacher import train_teacher

TASKS = ("teacher", "stage1", "stage2")


class EpochConcat(ConcatDataset):
    """ConcatDataset that forwards set_epoch, so simulated parts draw fresh crops every epoch."""

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)


@dataclass
class RunData:
    """A data stage's output, opened for training and evaluation."""

    root: Path
    catalogue: Catalogue
    rows: list[dict]
    label_of: dict[str, int]
    preprocess: Preprocess

    @classmethod
    def load(cls, root: str | Path, input_size: Sequence[int]) -> "RunData":
        root = Path(root)
        saved = Catalogue.load_json(root / CATALOGUE)
        # references come from the data dir itself, so a copy of it (e.g. a SageMaker channel) is self-contained
        catalogue = Catalogue([replace(c, source_path=str(root / "references" / f"{c.card_id}.png")) for c in saved],
                              card_size=saved.card_size, cache_size=min(len(saved) + 1, 4096))
        return cls(root, catalogue, load_manifest(root), default_labels(catalogue),
                   Preprocess(height=int(input_size[0]), width=int(input_size[1])))

    def crops(self, split: str, novel: Optional[bool] = None) -> CropDataset:
        rows = rows_for(self.rows, split, novel)
        if not rows:
            raise ValueError(f"no {split} photos{'' if novel is None else (' of novel' if novel else ' of seen')} cards")
        return CropDataset(rows, self.root, self.preprocess, self.label_of)

    def references(self, ids: Optional[Sequence[str]] = None) -> ReferenceDataset:
        return ReferenceDataset(self.catalogue, self.preprocess, ids=ids, label_of=self.label_of)

    @property
    def train_ids(self) -> list[str]:
        return sorted({r["card_id"] for r in self.rows if r["split"] == "train"}, key=self.label_of.get)


def retrieval_metrics(model: torch.nn.Module, data: RunData, split: str = "val", gallery_emb=None) -> dict:
    """top-1/top-5 of `split` photos of seen and of novel cards against the full gallery (all references).

    Test photos are read upright and turned 180° (the better reading counts), as the recogniser, the evaluation
    stage and its release gates read them, so the stages' test figures and retention are the gates' measure;
    validation during training reads them upright only, a cheaper signal for following the epochs."""
    device = next(model.parameters()).device
    if gallery_emb is None:
        gallery_emb, gallery_labels = embed(model, data.references(), device)
    else:
        gallery_labels = [data.label_of[c] for c in data.catalogue.ids]
    out = {}
    for novel, tag in ((False, "seen"), (True, "novel")):
        rows = rows_for(data.rows, split, novel)
        if not rows:
            continue
        crops = data.crops(split, novel)
        q, ql = embed(model, crops, device)
        if split == "test":
            q = np.stack([q, embed(model, Turned(crops), device)[0]], axis=1)
        r = retrieval_topk(q, ql, gallery_emb, gallery_labels, k=(1, 5))
        out[f"{split}_top1_{tag}"], out[f"{split}_top5_{tag}"] = r["top1"], r["top5"]
    return out


def _config(section, params, **overrides) -> TrainConfig:
    return TrainConfig.from_section(section, seed=params.run.seed, device=params.compute.device, **overrides)


def _finish(out: Path, model_saver, history: History, metrics: dict) -> dict:
    if ddp.is_main_process():
        model_saver(out / "model")
        history.to_json(out / "history.json")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return {"history": list(history), "metrics": metrics}


def teacher_task(params, data_root: str | Path, out_dir: str | Path, cache_dir: Optional[Path] = None) -> dict:
    """Metric learning of the DINOv3 teacher on photo crop ↔ reference pairs (+ fresh simulated crops)."""
    t, out = params.teacher, Path(out_dir)
    data = RunData.load(data_root, params.data.input_size)
    model = build_teacher(t.preset, t.embed_dim, t.pool, t.weights_dir, tuple(params.data.input_size), cache_dir)
    model.to(resolve_device(params.compute.device))
    before = retrieval_metrics(model, data, "val")
    train = EpochConcat([PairDataset(data.crops("train"), data.catalogue),
                         SimulatedCropDataset(data.catalogue, data.train_ids, data.preprocess, data.label_of,
                                              n_per_card=2, difficulty=params.data.difficulty, seed=params.run.seed)])
    history = train_teacher(model, train, lambda m: retrieval_metrics(m, data, "val"), _config(t, params),
                            out / "checkpoints", batch_size=t.batch_size, temperature=t.temperature, loss=t.loss,
                            num_workers=params.data.num_workers, n_classes=len(data.catalogue))
    metrics = {**{f"untrained_{k}": v for k, v in before.items()}, **retrieval_metrics(model, data, "test")}
    return _finish(out, lambda d: save_teacher(model, d), history, metrics)


def stage1_task(params, data_root: str | Path, teacher_dir: str | Path, out_dir: str | Path) -> dict:
    """Stage 1: the student learns the teacher's space on cached teacher embeddings of photos and references."""
    s, d, out = params.distill.stage1, params.distill, Path(out_dir)
    data = RunData.load(data_root, params.data.input_size)
    device = resolve_device(params.compute.device)
    teacher = load_teacher(teacher_dir, device=str(device))
    student = build_student(teacher.embed_dim, d.student_weights, d.channels_last).to(device)
    images: Dataset = EpochConcat([data.crops("train"), data.references(data.train_ids)])
    cached = CachedTargets(images, teacher_targets(teacher, images))
    held_out = data.crops("val")
    before = cosine_agreement(student, teacher, held_out)

    def val_fn(m):
        return {**retrieval_metrics(m, data, "val"),
                **{f"agreement_{k}": v for k, v in cosine_agreement(m, teacher, held_out).items() if k != "n"}}

    history = distill_stage1(student, cached, _config(s, params), out / "checkpoints", s.batch_size, s.w_feature,
                             s.w_distance, s.w_angle, val_fn=val_fn, num_workers=params.data.num_workers)
    metrics = {"untrained_agreement_mean_cos": before["mean_cos"],
               **{f"agreement_{k}": v for k, v in cosine_agreement(student, teacher, held_out).items()},
               **retrieval_metrics(student, data, "test")}
    return _finish(out, lambda p: save_student(student, p), history, metrics)


def stage2_task(params, data_root: str | Path, teacher_dir: str | Path, stage1_dir: str | Path,
                out_dir: str | Path) -> dict:
    """Stage 2: from stage 1, harder simulated photos, identity loss with hard negatives plus distillation."""
    s, out = params.distill.stage2, Path(out_dir)
    data = RunData.load(data_root, params.data.input_size)
    device = resolve_device(params.compute.device)
    teacher = load_teacher(teacher_dir, device=str(device))
    student = load_student(stage1_dir, device=str(device))
    refs = data.references()
    ref_targets = teacher_targets(teacher, refs)
    target_of = {int(lab): ref_targets[i] for i, lab in enumerate(refs.labels)}
    pairs = EpochConcat([PairDataset(data.crops("train"), data.catalogue),
                         SimulatedCropDataset(data.catalogue, data.train_ids, data.preprocess, data.label_of,
                                              n_per_card=1, difficulty=s.difficulty, seed=params.run.seed + 1)])
    train = WithTeacherRef(pairs, target_of)
    labels = [lab for part in pairs.datasets for lab in part.labels]
    sampler = None
    if s.hard_negatives:
        artwork = {data.label_of[c.card_id]: c.artwork_id for c in data.catalogue}
        sampler = GroupedBatchSampler([artwork[lab] for lab in labels], labels, s.batch_size, seed=params.run.seed,
                                      drop_last=True)
    history = distill_stage2(student, train, _config(s, params), out / "checkpoints", s.batch_size, s.w_metric,
                             s.w_feature, s.w_distance, s.w_angle, batch_sampler=sampler,
                             val_fn=lambda m: retrieval_metrics(m, data, "val"), num_workers=params.data.num_workers)
    metrics = {**{f"agreement_{k}": v for k, v in cosine_agreement(student, teacher, data.crops("val")).items()},
               **retrieval_metrics(student, data, "test")}
    return _finish(out, lambda p: save_student(student, p), history, metrics)


def run_task(task: str, params, data_root, out_dir, teacher_dir=None, stage1_dir=None) -> dict:
    """Dispatch by task name (what the entry point and every backend call)."""
    if task == "teacher":
        return teacher_task(params, data_root, out_dir)
    if task == "stage1":
        return stage1_task(params, data_root, teacher_dir, out_dir)
    if task == "stage2":
        return stage2_task(params, data_root, teacher_dir, stage1_dir, out_dir)
    raise ValueError(f"unknown task {task!r}; known: {TASKS}")

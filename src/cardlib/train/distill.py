"""Distillation DINOv3 teacher → student. Stage 1: the teacher's space (feature + relational KD) on cached
teacher embeddings. Stage 2: from stage 1, harder photos, identity loss + KD to the teacher's references."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cardlib.train.ddp import make_train_loader
from cardlib.train.loop import History, TrainConfig, fit
from cardlib.train.losses import feature_cosine, info_nce, rkd_angle, rkd_distance
from cardlib.train.retrieval import embed


class CachedTargets(Dataset):
    """(image, teacher embedding, label): the teacher forward runs once per image, not once per epoch."""

    def __init__(self, images: Dataset, targets: torch.Tensor):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} teacher embeddings")
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x, label = self.images[i][0], self.images[i][-1]
        return x, self.targets[i], label


def teacher_targets(teacher: nn.Module, images: Dataset, batch_size: int = 64) -> torch.Tensor:
    """Teacher embeddings of every image of `images` (yielding (image, ..., label)), computed once."""
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=0,
                        collate_fn=lambda b: (torch.stack([x[0] for x in b]), [x[-1] for x in b]))
    emb, _ = embed(teacher, loader, next(teacher.parameters()).device)
    return torch.from_numpy(emb)


class Stage1Objective(nn.Module):
    """Feature distillation (cosine to the teacher) + relational KD (distance and angle, Park et al. 2019)."""

    def __init__(self, student: nn.Module, w_feature: float, w_distance: float, w_angle: float):
        super().__init__()
        self.student, self.w = student, (w_feature, w_distance, w_angle)

    def forward(self, x, target):
        s = self.student(x)
        f, d, a = feature_cosine(s, target), rkd_distance(s, target), rkd_angle(s, target)
        return self.w[0] * f + self.w[1] * d + self.w[2] * a, (f, d, a)


def stage1_step(model: nn.Module, batch):
    x, target = batch[0], batch[1]
    loss, (f, d, a) = model(x, target)
    return loss, {"feature": float(f.detach()), "rkd_distance": float(d.detach()), "rkd_angle": float(a.detach())}


class Stage2Objective(nn.Module):
    """Photo ↔ reference identity loss (InfoNCE on the student) + KD of the photo to the teacher's reference."""

    def __init__(self, student: nn.Module, w_metric: float, w_feature: float, w_distance: float, w_angle: float,
                 temperature: float = 0.07):
        super().__init__()
        self.student, self.temperature = student, temperature
        self.w = (w_metric, w_feature, w_distance, w_angle)

    def forward(self, photos, refs, teacher_refs, labels):
        emb = self.student(torch.cat([photos, refs]))
        photo, ref = emb[: len(photos)], emb[len(photos):]
        metric = info_nce(photo, ref, labels, self.temperature)
        f = 0.5 * (feature_cosine(photo, teacher_refs) + feature_cosine(ref, teacher_refs))
        d, a = rkd_distance(photo, teacher_refs), rkd_angle(photo, teacher_refs)
        total = self.w[0] * metric + self.w[1] * f + self.w[2] * d + self.w[3] * a
        return total, (metric, f, d, a)


def stage2_step(model: nn.Module, batch):
    photos, refs, teacher_refs, labels = batch
    loss, (m, f, d, a) = model(photos, refs, teacher_refs, labels.long())
    return loss, {"metric": float(m.detach()), "feature": float(f.detach()), "rkd_distance": float(d.detach()),
                  "rkd_angle": float(a.detach())}


class WithTeacherRef(Dataset):
    """(photo, reference, teacher embedding of the card's reference, label) for stage 2."""

    def __init__(self, pairs: Dataset, teacher_ref_of_label: dict[int, torch.Tensor]):
        self.pairs, self.ref = pairs, teacher_ref_of_label

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.pairs, "set_epoch"):
            self.pairs.set_epoch(epoch)

    def __getitem__(self, i):
        photo, ref, label = self.pairs[i]
        return photo, ref, self.ref[int(label)], int(label)


def distill_stage1(student: nn.Module, data: CachedTargets, cfg: TrainConfig, ckpt_dir: str | Path,
                   batch_size: int, w_feature: float = 1.0, w_distance: float = 1.0, w_angle: float = 2.0,
                   val_fn: Optional[Callable[[nn.Module], dict]] = None, num_workers: int = 0,
                   on_epoch_end=None, resume: bool = True) -> History:
    """Stage 1: learn the teacher's embedding space from cached teacher embeddings."""
    objective = Stage1Objective(student, w_feature, w_distance, w_angle)
    loader = make_train_loader(data, batch_size, seed=cfg.seed, num_workers=num_workers)
    return fit(objective, stage1_step, loader, cfg, ckpt_dir,
               evaluate=(lambda m: val_fn(m.student)) if val_fn else None,
               on_epoch_end=(lambda r, m: on_epoch_end(r, m.student)) if on_epoch_end else None, resume=resume)


def distill_stage2(student: nn.Module, data: WithTeacherRef, cfg: TrainConfig, ckpt_dir: str | Path,
                   batch_size: int, w_metric: float = 1.0, w_feature: float = 1.0, w_distance: float = 1.0,
                   w_angle: float = 2.0, batch_sampler=None, val_fn=None, num_workers: int = 0,
                   on_epoch_end=None, resume: bool = True) -> History:
    """Stage 2: identity metric learning with hard negatives (via `batch_sampler`) plus distillation."""
    objective = Stage2Objective(student, w_metric, w_feature, w_distance, w_angle)
    if batch_sampler is not None:
        loader = DataLoader(data, batch_sampler=batch_sampler, num_workers=num_workers)
    else:
        loader = make_train_loader(data, batch_size, seed=cfg.seed, num_workers=num_workers)
    return fit(objective, stage2_step, loader, cfg, ckpt_dir,
               evaluate=(lambda m: val_fn(m.student)) if val_fn else None,
               on_epoch_end=(lambda r, m: on_epoch_end(r, m.student)) if on_epoch_end else None, resume=resume)


def cosine_agreement(student: nn.Module, teacher: nn.Module, images: Dataset, batch_size: int = 64) -> dict:
    """Mean/min cosine between student and teacher embeddings of the same held-out images."""
    s, _ = embed(student, images, next(student.parameters()).device, batch_size)
    t, _ = embed(teacher, images, next(teacher.parameters()).device, batch_size)
    cos = (s * t).sum(axis=1)
    return {"mean_cos": float(cos.mean()), "min_cos": float(cos.min()), "n": int(len(cos))}

"""Teacher training: photo crop ↔ reference metric learning (InfoNCE or sub-center ArcFace) on `fit`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from cardlib.train.ddp import make_train_loader
from cardlib.train.loop import History, TrainConfig, fit
from cardlib.train.losses import SubCenterArcFace, info_nce

LOSSES = ("infonce", "subcenter_arcface")


def label_tensor(labels: Any) -> torch.Tensor:
    """Integer labels as a tensor; string card ids become in-batch indices (enough for InfoNCE)."""
    if torch.is_tensor(labels):
        return labels.long()
    if isinstance(labels, Sequence) and labels and isinstance(labels[0], str):
        index = {s: i for i, s in enumerate(dict.fromkeys(labels))}
        return torch.tensor([index[s] for s in labels], dtype=torch.long)
    return torch.as_tensor(labels, dtype=torch.long)


class PairObjective(nn.Module):
    """The teacher and its loss in one module, so DDP sees a single forward per step."""

    def __init__(self, teacher: nn.Module, loss: str = "infonce", temperature: float = 0.07,
                 n_classes: Optional[int] = None, embed_dim: Optional[int] = None):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.teacher, self.loss, self.temperature = teacher, loss, float(temperature)
        self.arcface = None
        if loss == "subcenter_arcface":
            if not n_classes:
                raise ValueError("subcenter_arcface needs n_classes (the number of card identities)")
            self.arcface = SubCenterArcFace(embed_dim or teacher.embed_dim, n_classes)

    def forward(self, photos: torch.Tensor, refs: torch.Tensor, labels: torch.Tensor):
        emb = self.teacher(torch.cat([photos, refs]))
        photo, ref = emb[: len(photos)], emb[len(photos):]
        if self.arcface is None:
            loss = info_nce(photo, ref, labels, self.temperature)
        else:
            loss = self.arcface(emb, torch.cat([labels, labels]))
        with torch.no_grad():  # in-batch photo → reference top-1, a cheap training-progress signal
            nearest = (photo.float() @ ref.float().T).argmax(dim=1)
            batch_top1 = (labels[nearest] == labels).float().mean()
        return loss, batch_top1


def pair_step(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """step_fn for `fit`: a batch of (photo crops, references, labels) through a PairObjective."""
    photos, refs, labels = batch[0], batch[1], label_tensor(batch[2]).to(batch[0].device)
    loss, batch_top1 = model(photos, refs, labels)
    return loss, {"batch_top1": float(batch_top1)}


def train_teacher(model: nn.Module, train_pairs: Dataset, val_fn: Optional[Callable[[nn.Module], dict]],
                  cfg: TrainConfig, ckpt_dir: str | Path, batch_size: int = 64, temperature: float = 0.07,
                  loss: str = "infonce", num_workers: int = 0, n_classes: Optional[int] = None,
                  on_epoch_end: Optional[Callable[[dict, nn.Module], None]] = None, resume: bool = True) -> History:
    """Train the teacher on (photo crop, reference, label) pairs; val_fn(teacher) -> metrics runs each epoch."""
    if len(train_pairs) < batch_size:
        raise ValueError(f"{len(train_pairs)} training pairs is fewer than one batch of {batch_size}")
    if loss == "subcenter_arcface" and n_classes is None:
        n_classes = getattr(train_pairs, "n_classes", None) or getattr(train_pairs, "num_classes", None)
    objective = PairObjective(model, loss=loss, temperature=temperature, n_classes=n_classes)
    loader = make_train_loader(train_pairs, batch_size, seed=cfg.seed, num_workers=num_workers)
    evaluate = (lambda m: val_fn(m.teacher)) if val_fn is not None else None
    epoch_hook = (lambda rec, m: on_epoch_end(rec, m.teacher)) if on_epoch_end is not None else None
    return fit(objective, pair_step, loader, cfg, ckpt_dir, evaluate=evaluate, on_epoch_end=epoch_hook, resume=resume)

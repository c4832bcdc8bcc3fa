"""Metric-learning losses (InfoNCE, sub-center ArcFace) and distillation losses (cosine, RKD) on unit embeddings."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{what}: expected two (N, D) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _multi_positive_ce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """-log(Σ_pos exp / Σ_all exp) per row: every same-card column counts as a positive, none as a negative."""
    log_all = torch.logsumexp(logits, dim=1)
    log_pos = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
    return (log_all - log_pos).mean()


def info_nce(photo_emb: torch.Tensor, ref_emb: torch.Tensor, labels: torch.Tensor,
             temperature: float = 0.07) -> torch.Tensor:
    """Symmetric photo↔reference InfoNCE; row i is a photo of card labels[i] and its reference."""
    _check_pair(photo_emb, ref_emb, "info_nce")
    if labels.shape != (photo_emb.shape[0],):
        raise ValueError(f"info_nce: labels must have shape ({photo_emb.shape[0]},), got {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    photo, ref = F.normalize(photo_emb.float(), dim=-1), F.normalize(ref_emb.float(), dim=-1)
    logits = photo @ ref.T / temperature
    positives = labels[:, None] == labels[None, :]
    return 0.5 * (_multi_positive_ce(logits, positives) + _multi_positive_ce(logits.T, positives.T))


class SubCenterArcFace(nn.Module):
    """Sub-center ArcFace (Deng et al. 2020): k centres per class, additive angular margin on the nearest."""

    def __init__(self, embed_dim: int, n_classes: int, k: int = 3, margin: float = 0.3, scale: float = 30.0):
        super().__init__()
        if n_classes < 2 or k < 1 or embed_dim < 1:
            raise ValueError(f"SubCenterArcFace needs n_classes >= 2, k >= 1, embed_dim >= 1 "
                             f"(got {n_classes}, {k}, {embed_dim})")
        self.n_classes, self.k, self.margin, self.scale = int(n_classes), int(k), float(margin), float(scale)
        self.weight = nn.Parameter(torch.empty(self.n_classes * self.k, embed_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.min() < 0 or labels.max() >= self.n_classes:
            raise ValueError(f"SubCenterArcFace: labels must lie in [0, {self.n_classes}), "
                             f"got [{int(labels.min())}, {int(labels.max())}]")
        cos = F.normalize(emb.float(), dim=-1) @ F.normalize(self.weight.float(), dim=-1).T
        cos = cos.view(-1, self.n_classes, self.k).amax(dim=2).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cos.gather(1, labels[:, None])
        # cos(θ+m), falling back to a linear penalty past θ = π - m where cos(θ+m) stops being monotonic
        with_margin = target * math.cos(self.margin) - torch.sqrt(1 - target**2) * math.sin(self.margin)
        threshold = math.cos(math.pi - self.margin)
        with_margin = torch.where(target > threshold, with_margin, target - math.sin(math.pi - self.margin) * self.margin)
        logits = cos.scatter(1, labels[:, None], with_margin) * self.scale
        return F.cross_entropy(logits, labels)


def feature_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine) between matching student and teacher embeddings."""
    _check_pair(student, teacher, "feature_cosine")
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, x, p=2)
    off_diag = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    mean = d[off_diag].mean().clamp_min(1e-12)
    return d / mean


def _relational(student: torch.Tensor, teacher: torch.Tensor, relation, min_n: int, name: str) -> torch.Tensor:
    """Smooth-L1 between a relation of the student's and of the teacher's L2-normalised batch (teacher: no grad)."""
    _check_pair(student, teacher, name)
    if len(student) < min_n:
        raise ValueError(f"{name} needs at least {min_n} embeddings")
    s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    with torch.no_grad():
        target = relation(t)
    return F.smooth_l1_loss(relation(s), target)


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance term (Park et al. 2019): smooth-L1 between mean-normalised pairwise distances."""
    return _relational(student, teacher, _normalised_distances, 2, "rkd_distance")


def _angles(x: torch.Tensor) -> torch.Tensor:
    e = F.normalize(x[None, :, :] - x[:, None, :], dim=2)  # e[i, j] = unit(x_j - x_i)
    return torch.bmm(e, e.transpose(1, 2)).flatten()  # cos of angle j-i-k for every anchor i


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle term (Park et al. 2019): smooth-L1 between cosines of all triplet angles."""
    return _relational(student, teacher, _angles, 3, "rkd_angle")

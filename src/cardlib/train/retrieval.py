"""Embedding a dataset and cosine nearest-neighbour retrieval metrics (validation top-k)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


def _image_and_label(batch: Any) -> tuple[torch.Tensor, Any]:
    """(image, label, ...) tuples or {"image", "label"} dicts, as datasets yield them."""
    if isinstance(batch, dict):
        return batch["image"], batch.get("label")
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _labels_array(labels: list) -> np.ndarray:
    flat = []
    for lab in labels:
        flat.extend(lab.tolist() if torch.is_tensor(lab) else list(lab))
    return np.asarray(flat)


def embed(model: nn.Module, loader_or_dataset: DataLoader | Dataset, device: str | torch.device = "cpu",
          batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, D) float32 and labels (N,) of every item; the model is put in eval mode."""
    loader = loader_or_dataset if isinstance(loader_or_dataset, DataLoader) else \
        DataLoader(loader_or_dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    chunks, labels = [], []
    with torch.inference_mode():
        for batch in tqdm(loader, desc="embed", leave=False, disable=None):
            images, lab = _image_and_label(batch)
            chunks.append(model(images.to(device)).float().cpu().numpy())
            if lab is not None:
                labels.append(lab)
    model.train(was_training)
    if not chunks:
        raise ValueError("nothing to embed: the dataset is empty")
    return np.concatenate(chunks).astype(np.float32), (_labels_array(labels) if labels else np.arange(0))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Turned(Dataset):
    """A dataset's items with the image (CHW tensor, first element) turned 180°: the crop read upside down."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        return (torch.flip(item[0], dims=(-2, -1)), *item[1:])


def retrieval_topk(query_emb: np.ndarray, query_labels: Sequence, gallery_emb: np.ndarray,
                   gallery_labels: Sequence, k: Sequence[int] = (1, 5), chunk: int = 1024) -> dict:
    """Fraction of queries whose label is among the k cosine-nearest gallery items, for each k.

    `query_emb` is (N, D), or (N, V, D) for V readings of each query (upright and turned 180°): a gallery item's
    similarity is then its best over the readings, as the recogniser scores it."""
    views = np.asarray(query_emb, dtype=np.float32)
    views = views[:, None] if views.ndim == 2 else views
    if views.ndim != 3:
        raise ValueError(f"query embeddings must be (N, D) or (N, V, D), got shape {views.shape}")
    q = _unit(views.reshape(-1, views.shape[-1])).reshape(views.shape)
    g = _unit(gallery_emb)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    if g.ndim != 2 or q.shape[2] != g.shape[1]:
        raise ValueError(f"embeddings must have equal D, got {q.shape} and {g.shape}")
    if len(ql) != len(q) or len(gl) != len(g):
        raise ValueError("one label per embedding is required for queries and gallery")
    if len(q) == 0 or len(g) == 0:
        raise ValueError("retrieval needs at least one query and one gallery item")
    ks = sorted({int(x) for x in k})
    kmax = min(max(ks), len(g))
    hits = {kk: 0 for kk in ks}
    for s in range(0, len(q), chunk):
        sims = (q[s:s + chunk] @ g.T).max(axis=1)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :kmax]
        match = gl[top] == ql[s:s + chunk, None]
        for kk in ks:
            hits[kk] += int(match[:, :min(kk, kmax)].any(axis=1).sum())
    out = {f"top{kk}": hits[kk] / len(q) for kk in ks}
    out.update(n_queries=int(len(q)), n_gallery=int(len(g)))
    return out


def retrieval_evaluator(queries: Dataset | DataLoader, gallery: Dataset | DataLoader, batch_size: int = 64,
                        k: Sequence[int] = (1, 5)):
    """A `val_fn(model) -> {"top1", "top5", ...}`: embed queries and gallery on the model's device, then retrieve."""
    def evaluate(model: nn.Module) -> dict:
        device = next(model.parameters()).device
        q, ql = embed(model, queries, device, batch_size)
        g, gl = embed(model, gallery, device, batch_size)
        return retrieval_topk(q, ql, g, gl, k=k)
    return evaluate

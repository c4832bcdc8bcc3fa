"""Small plotting helpers shared by the notebooks (matplotlib figures, returned for display)."""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np


def image_grid(images: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None, ncols: int = 6,
               cell: float = 2.0, suptitle: str = ""):
    """A grid of RGB images with small titles."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to show")
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    h, w = images[0].shape[:2]
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell, nrows * cell * h / w + 0.3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(img)
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def curves(history: Sequence[dict], keys: Sequence[str], title: str = ""):
    """Per-epoch curves of the given History keys, one panel per key."""
    keys = [k for k in keys if any(k in r for r in history)]
    if not keys:
        raise ValueError("none of the keys are in the history")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        xs = [r["epoch"] for r in history if k in r]
        ax.plot(xs, [r[k] for r in history if k in r], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(k)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

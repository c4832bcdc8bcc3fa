"""Fitting the outline ranker (`find_card_rank`) on simulated photos with known corners.

The model is a conditional logit: per photo, a softmax over its candidate outlines, fitted to put the mass on the
outlines that match the card (IoU >= 0.9). Photos where no candidate matches teach nothing and are left out."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cardlib.find_card import candidate_outlines
from cardlib.find_card_band import outline_bands
from cardlib.find_card_geometry import quad_iou
from cardlib.find_card_rank import FEATURES, outline_scores, pool_features, weight_arrays
from cardlib.find_card_select import select_cards
from cardlib.store import atomic_write_text

FOUND_IOU = 0.9


def ranking_example(rgb: np.ndarray, true_corners: np.ndarray):
    """(features, IoU with the true card) for the pool `rank_outlines` would score on this photo; None when the
    rules choose nothing (the ranker is not asked then)."""
    cands, small, scale, mask = candidate_outlines(rgb)
    bands = outline_bands(small, [q for q, _ in cands])
    chosen = select_cards(cands, small, 1, bands)
    if not chosen:
        return None
    pool, x = pool_features(cands, chosen[0], 1, small, mask, bands)
    truth = (np.asarray(true_corners, np.float64) + 0.5) * scale - 0.5
    return x, np.array([quad_iou(q, truth) for q, _ in pool])


def fit_ranker(examples: list, l2: float = 0.01) -> dict:
    """Weights (feature standardisation + coefficients) maximising the softmax likelihood of the true outlines."""
    rows = [e for e in examples if e is not None]
    if not rows:
        raise ValueError("no photo with candidate outlines to fit the ranker on")
    x_all = np.concatenate([x for x, _ in rows])
    mean, scale = x_all.mean(0), x_all.std(0) + 1e-6
    groups = [(torch.tensor((x - mean) / scale, dtype=torch.float64), torch.tensor(iou >= FOUND_IOU))
              for x, iou in rows if (iou >= FOUND_IOU).any()]
    if not groups:
        raise ValueError("no photo has the card's outline among its candidates: nothing to learn from")
    w = torch.zeros(len(FEATURES), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        nll = sum(torch.logsumexp(x @ w, 0) - torch.logsumexp((x @ w)[hit], 0) for x, hit in groups)
        loss = nll / len(groups) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"features": list(FEATURES), "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": w.detach().numpy().tolist(), "l2": l2, "photos": len(rows), "photos_with_card_outline": len(groups)}


def pick_rates(examples: list, weights: dict | None = None) -> dict:
    """Share of photos whose picked outline matches the card: the rules' pick, the ranker's, and the best possible
    (some candidate matches). Photos with no candidate at all count as misses."""
    wts = None if weights is None else weight_arrays(weights)
    n = max(len(examples), 1)
    rules = ranked = best = 0
    for e in examples:
        if e is None:
            continue
        x, iou = e
        rules += iou[int(np.argmax(x[:, FEATURES.index("chosen")]))] >= FOUND_IOU
        ranked += iou[int(np.argmax(outline_scores(x, wts)))] >= FOUND_IOU
        best += iou.max() >= FOUND_IOU
    return {"rules": round(rules / n, 4), "ranker": round(ranked / n, 4), "any_candidate": round(best / n, 4)}


def save_weights(weights: dict, path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(weights, indent=1) + "\n")

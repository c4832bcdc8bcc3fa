"""Fitting the outline ranker (`find_card_rank`) on simulated photos with known corners.

The model is a conditional logit: per photo, a softmax over its candidate outlines, fitted to put the mass on the
outlines that match the card (IoU >= 0.9). Photos where no candidate matches teach nothing and are left out. The
score is linear in the standardised features plus a small tanh layer, fitted on photos of which one in eight has
other cards beside the card (as the data stage's). Measured with `find_card` end to end on 2,200 simulated photos
of other seeds, against the linear score fitted on photos without other cards: with other cards in view 0.704 ->
0.752 found (after the gallery check 0.778 -> 0.814; 32 photos gained, 8 lost), a card alone 0.908 -> 0.914
(0.932 -> 0.933). Refitted when the candidates came to include the halves of outlines shaped like two cards
(`find_card._halves`)."""
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


def _pools(groups: list, mean: np.ndarray, scale: np.ndarray) -> tuple:
    """Standardised feature rows of every pool padded to one size (G, P, F), which rows are real, which the card's."""
    size = max(len(x) for x, _ in groups)
    z = torch.zeros(len(groups), size, len(FEATURES))
    real = torch.zeros(len(groups), size, dtype=torch.bool)
    hit = torch.zeros(len(groups), size, dtype=torch.bool)
    for g, (x, h) in enumerate(groups):
        z[g, : len(x)] = torch.as_tensor((x - mean) / scale, dtype=torch.float32)
        real[g, : len(x)], hit[g, : len(x)] = True, torch.as_tensor(h)
    return z, real, hit


def _fit(z, real, hit, hidden: int, weight_decay: float, steps: int) -> tuple:
    """Full-batch Adam on the pools' softmax likelihood: linear coefficients, and the tanh layer's (W, b, v) or None
    when `hidden` is 0."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(len(FEATURES), 1, bias=False)
    torch.nn.init.zeros_(linear.weight)
    layer = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), hidden), torch.nn.Tanh(),
                                torch.nn.Linear(hidden, 1, bias=False)) if hidden else None
    params = list(linear.parameters()) + (list(layer.parameters()) if layer else [])
    opt = torch.optim.Adam(params, lr=0.01, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        s = linear(z)[..., 0] + (layer(z)[..., 0] if layer else 0.0)
        nll = torch.logsumexp(s.masked_fill(~real, -torch.inf), 1) - torch.logsumexp(s.masked_fill(~hit, -torch.inf), 1)
        nll.mean().backward()
        opt.step()
    coef = linear.weight.detach().double().numpy()[0]
    if not layer:
        return coef, None
    w, b, v = (t.detach().double().numpy() for t in (layer[0].weight, layer[0].bias, layer[2].weight))
    return coef, (w, b, v[0])


def fit_ranker(examples: list, weight_decay: float = 1e-3, hidden: int = 8, steps: int = 500) -> dict:
    """Weights (feature standardisation, linear coefficients, a tanh layer of `hidden` units; 0: linear only)
    maximising the softmax likelihood of the true outlines."""
    rows = [e for e in examples if e is not None]
    if not rows:
        raise ValueError("no photo with candidate outlines to fit the ranker on")
    x_all = np.concatenate([x for x, _ in rows])
    mean, scale = x_all.mean(0), x_all.std(0) + 1e-6
    groups = [(x, iou >= FOUND_IOU) for x, iou in rows if (iou >= FOUND_IOU).any()]
    if not groups:
        raise ValueError("no photo has the card's outline among its candidates: nothing to learn from")
    coef, tanh_layer = _fit(*_pools(groups, mean, scale), hidden, weight_decay, steps)
    weights = {"features": list(FEATURES), "mean": mean.tolist(), "scale": scale.tolist(), "coef": coef.tolist(),
               "weight_decay": weight_decay, "steps": steps, "photos": len(rows),
               "photos_with_card_outline": len(groups)}
    if tanh_layer:
        weights.update(zip(("hidden_w", "hidden_b", "hidden_out"), (a.tolist() for a in tanh_layer)))
    return weights


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

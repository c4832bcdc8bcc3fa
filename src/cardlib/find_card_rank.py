"""Which of a photo's candidate outlines is the card: a logistic ranker over what the outline rules look at.

The rules in `find_card_select` pick one outline per object from edge evidence, nesting and printed borders. On
simulated photos the card's true outline is often among the candidates when the rules pick another one (its printed
inner frame, a sleeve, a box on the table). The ranker scores every candidate from the rules' choice, its edge score,
its nesting (outlines a border's width outside or inside it), the printed border and clear plastic along its sides,
its size, its position, where the camera was aimed (a clear card of its size nearer the photo's centre) and its
agreement with the card-mask network (`find_card_mask`): a linear score plus a small tanh layer over the same
features (interactions such as "off-centre matters only when another clear card is in view"), with weights fitted
on simulated photos (`find_card_rank_fit`): the best outline of each chosen object is the card's, the next ones are
the alternatives `find_card` offers to a gallery check. The weights are a small JSON file shipped with the package
(`find_card_ranker.json`).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from cardlib.find_card_band import OutlineBands
from cardlib.find_card_geometry import quad_iou
from cardlib.find_card_mask import mask_agreement
from cardlib.find_card_select import CLEAR_MIN, _area, ring_gaps

WEIGHTS = Path(__file__).with_name("find_card_ranker.json")
OUTLINE_MIN = 0.35  # the weakest edge score of an outline that may replace the rules' choice or be offered beside it
FEATURES = ("score", "score_to_top", "score_rank", "chosen", "iou_chosen", "log_area_photo", "log_area_chosen",
            "border_band", "plastic_edge", "ring_outside", "ring_inside", "cards_inside", "inside_larger",
            "outside_photo", "centre_offset", "inside_uneven", "outside_uneven", "in_out_contrast", "in_out_weakest",
            "inside_spread", "mask_agreement", "off_centre", "aimed_rival", "clear_apart")


def candidate_features(cands: list, chosen_quad: np.ndarray, rgb: np.ndarray, mask: tuple,
                       bands: OutlineBands) -> np.ndarray:
    """(N, len(FEATURES)) for candidates (quad, edge score) against the rules' choice for this object; `mask` is
    the card-mask network's (probability map, pixels per map pixel) for `rgb`; `bands` the candidates'
    `outline_bands`."""
    h, w = rgb.shape[:2]
    quads = [np.asarray(q, np.float64) for q, _ in cands]
    scores = np.array([s for _, s in cands], np.float64)
    areas = np.array([_area(q) for q in quads])
    frame = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    chosen_area = max(_area(chosen_quad), 1e-6)
    rings = ring_gaps(quads, quads)  # rings[a, b]: a runs a border's width outside b
    bigger = areas[:, None] > 1.02 * areas[None, :]
    covered = _coverage(quads)  # covered[a, b]: share of a inside b
    med_in, med_out, spread = bands.bands4
    agreement = mask_agreement(np.array(quads), *mask)
    n = len(quads)
    others = (scores[None, :] >= 0.6 * scores[:, None]) & ~np.eye(n, dtype=bool)  # others[i, k]: k is a rival of i
    nested = (areas[None, :] < 0.98 * areas[:, None]) & (covered.T > 0.9)  # nested[i, k]: k lies inside i
    cards = nested & (areas[None, :] > 0.08 * areas[:, None]) & (areas[None, :] < 0.62 * areas[:, None]) \
        & (scores[None, :] >= 0.45)
    within = others & (areas[:, None] > 0.6 * areas[None, :]) & (areas[:, None] < 0.98 * areas[None, :]) \
        & (covered > 0.9)  # within[i, k]: i lies inside a rival k not much larger
    in_out = np.linalg.norm(med_in - med_out, axis=-1)
    # the camera is aimed at the card: how far off the photo's centre each outline lies (in its own extent), and
    # whether a clear outline of about its size, apart from it, lies nearer the centre (a card beside it)
    off = np.minimum([_off_centre(q, rgb.shape) for q in quads], 3.0)
    apart = (covered < 0.2) & (covered.T < 0.2)
    similar = (areas[None, :] > 0.4 * areas[:, None]) & (areas[None, :] < 2.5 * areas[:, None])
    rivals = apart & similar & (scores[None, :] >= CLEAR_MIN)
    aimed_rival = (rivals & (off[None, :] + 0.1 < off[:, None])).any(1)
    columns = {
        "score": scores, "score_to_top": scores / max(scores.max(), 1e-6),
        "score_rank": np.minimum(np.arange(n), 10) / 10.0,
        "chosen": np.array([float(np.abs(q - chosen_quad).max() < 1e-6) for q in quads]),
        "iou_chosen": np.array([quad_iou(q, chosen_quad) for q in quads]),
        "log_area_photo": np.log(np.maximum(areas, 1.0) / (h * w)),
        "log_area_chosen": np.log(np.maximum(areas, 1.0) / chosen_area),
        "border_band": bands.border, "plastic_edge": bands.plastic,
        "ring_outside": (others & (bigger & rings).T).any(1), "ring_inside": (others & bigger & rings).any(1),
        "cards_inside": np.minimum(cards.sum(1), 3) / 3, "inside_larger": within.any(1),
        "outside_photo": np.array([1.0 - cv2.intersectConvexConvex(q.astype(np.float32), frame)[0] / max(a, 1e-6)
                                   for q, a in zip(quads, areas)]),
        "centre_offset": np.linalg.norm((np.array([q.mean(0) for q in quads]).reshape(-1, 2) - [w / 2, h / 2])
                                        / [w, h], axis=1),
        "inside_uneven": np.linalg.norm(med_in - np.median(med_in, axis=1, keepdims=True), axis=-1).max(1) / 100.0,
        "outside_uneven": np.linalg.norm(med_out - np.median(med_out, axis=1, keepdims=True), axis=-1).max(1) / 100.0,
        "in_out_contrast": np.median(in_out, axis=1) / 100.0, "in_out_weakest": in_out.min(1) / 100.0,
        "inside_spread": np.median(spread, axis=1) / 100.0, "mask_agreement": agreement,
        "off_centre": off, "aimed_rival": aimed_rival,
        "clear_apart": np.minimum(rivals.sum(1), 2) / 2,
    }
    return np.stack([np.asarray(columns[f], np.float64) for f in FEATURES], axis=1).reshape(-1, len(FEATURES))


def _off_centre(quad: np.ndarray, shape) -> float:
    """How far the quad's centre lies from the photo's centre, per axis, in units of its own extent, the larger of
    the two."""
    q = np.asarray(quad, np.float64)
    extent = np.maximum(q.max(0) - q.min(0), 1e-6)
    return float(np.max(np.abs(q.mean(0) - [shape[1] / 2, shape[0] / 2]) / extent))


def pool_for(cands: list, chosen: tuple, n_chosen: int) -> list:
    """The candidates that may replace one chosen outline: with one card chosen, all of them with an edge score of
    at least OUTLINE_MIN (best score first); with several, those of the same object (overlapping it). The chosen
    outline is always among them. Without the floor a fitted ranker preferred a faint outline (edge score 0.34) a
    border's width outside a clear card: its sides have no edge to speak of."""
    q = chosen[0]
    pool = sorted((c for c in cands if c[1] >= OUTLINE_MIN), key=lambda c: -c[1])
    if n_chosen > 1:
        pool = [c for c in pool if quad_iou(c[0], q) > 0.5]
    if not any(np.abs(np.asarray(c[0]) - q).max() < 1e-6 for c in pool):
        pool.append(chosen)
    return pool


def _coverage(quads: list) -> np.ndarray:
    """(N, N): share of quad a lying inside quad b (pairs whose bounding boxes do not meet: 0)."""
    n = len(quads)
    box = np.array([[*q.min(0), *q.max(0)] for q in quads]).reshape(-1, 4)
    meet = ((box[:, None, 0] < box[None, :, 2]) & (box[None, :, 0] < box[:, None, 2])
            & (box[:, None, 1] < box[None, :, 3]) & (box[None, :, 1] < box[:, None, 3]))
    inter = np.zeros((n, n))
    q32 = [np.asarray(q, np.float32) for q in quads]
    for a, b in zip(*np.nonzero(np.triu(meet, 1))):  # the overlap is symmetric: measured once a pair
        inter[a, b] = inter[b, a] = cv2.intersectConvexConvex(q32[a], q32[b])[0]
    out = inter / np.maximum([_area(q) for q in quads], 1e-6)[:, None]
    np.fill_diagonal(out, 1.0)
    return out


def weight_arrays(weights: dict) -> tuple:
    """(mean, scale, coef, hidden) arrays of a weights dict (the shipped JSON, or `fit_ranker`'s result); `hidden`
    is (W (H, F), b (H,), v (H,)) of the tanh layer, or None for a linear ranker."""
    if tuple(weights["features"]) != FEATURES:
        raise ValueError(f"ranker features {weights['features']} do not match this cardlib's {list(FEATURES)}")
    linear = tuple(np.asarray(weights[k], np.float64) for k in ("mean", "scale", "coef"))
    hidden = tuple(np.asarray(weights[k], np.float64) for k in ("hidden_w", "hidden_b", "hidden_out")) \
        if weights.get("hidden_w") else None
    return (*linear, hidden)


@lru_cache(maxsize=1)
def _weights():
    """The shipped weights as arrays; None when the file is absent (the rules' choice stands)."""
    return weight_arrays(json.loads(WEIGHTS.read_text())) if WEIGHTS.is_file() else None


def outline_scores(x: np.ndarray, weights=None) -> np.ndarray:
    """Ranking scores for feature rows `x` of one pool (higher: more likely the card's outline; a softmax over the
    pool gives probabilities). Without weights the rules' choice scores 1 and the rest 0."""
    wts = weights or _weights()
    if wts is None:
        return x[:, FEATURES.index("chosen")]
    mean, scale, coef, hidden = wts
    z = (x - mean) / scale
    score = z @ coef
    if hidden is not None:
        w, b, v = hidden
        score = score + np.tanh(z @ w.T + b) @ v
    return score


def pool_features(cands: list, chosen: tuple, n_chosen: int, rgb: np.ndarray, mask: tuple,
                  bands: OutlineBands) -> tuple[list, np.ndarray]:
    """The pool that may replace one chosen outline (`pool_for`) and its feature rows; `bands`: the candidates'
    `outline_bands`."""
    pool = pool_for(cands, chosen, n_chosen)
    row = {id(c): k for k, c in enumerate(cands)}  # pools hold the candidates themselves
    return pool, candidate_features(pool, chosen[0], rgb, mask, bands.take([row[id(p)] for p in pool]))


def rank_outlines(cands: list, chosen: list, rgb: np.ndarray, mask: tuple, bands: OutlineBands) -> list[list]:
    """For each card the rules chose, the candidates that may replace it, ranked (best first): the first of each
    is the card's outline, the rest the next-best readings of the same object. `bands`: the candidates'
    `outline_bands`."""
    ranked = []
    for c in chosen:
        pool, x = pool_features(cands, c, len(chosen), rgb, mask, bands)
        ranked.append([pool[k] for k in np.argsort(-outline_scores(x), kind="stable")])
    return ranked

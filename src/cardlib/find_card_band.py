"""What lies along a quad's sides: a card's printed border band inside, clear plastic, or the table outside."""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

PLASTIC = np.array([235.0, 238.0, 242.0])  # clear sleeve/toploader film seen against light: whitish, faintly blue
CARD_PX = (112, 160)  # (W, H) of the card in the normalised view: sides are sampled at this resolution
MARGIN = 12  # px of the normalised view kept outside the quad


def band_view(rgb: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The quad warped to a CARD_PX portrait with MARGIN px of its surroundings (float32 RGB): what `side_bands`
    reads (stack several to measure them at once)."""
    w, h = CARD_PX
    q = np.asarray(quad, np.float32).reshape(4, 2)
    s = np.linalg.norm(np.roll(q, -1, 0) - q, axis=1)
    if s[0] + s[2] > s[1] + s[3]:
        q = np.roll(q, 1, axis=0)  # on its side: keep the view portrait
    dst = np.float32([[0, 0], [w, 0], [w, h], [0, h]]) + MARGIN
    m = cv2.getPerspectiveTransform(q, dst)
    return cv2.warpPerspective(rgb, m, (w + 2 * MARGIN, h + 2 * MARGIN), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT).astype(np.float32)


def _strips(v: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the bands between lo and hi px outside the quad's sides (negative: inside), corners left out, of
    views (..., H, W, 3): (top and bottom stacked, left and right stacked), each (..., 2, n, 3)."""
    w, h, m = CARD_PX[0], CARD_PX[1], MARGIN
    cx0, cx1, cy0, cy1 = m + w // 6, m + w - w // 6, m + h // 8, m + h - h // 8
    if lo < 0:  # inside bands, measured inward from each side
        a, b = -hi, -lo
        top, bottom = v[..., m + a:m + b, cx0:cx1, :], v[..., m + h - b:m + h - a, cx0:cx1, :]
        left, right = v[..., cy0:cy1, m + a:m + b, :], v[..., cy0:cy1, m + w - b:m + w - a, :]
    else:
        top, bottom = v[..., m - hi:m - lo, cx0:cx1, :], v[..., m + h + lo:m + h + hi, cx0:cx1, :]
        left, right = v[..., cy0:cy1, m - hi:m - lo, :], v[..., cy0:cy1, m + w + lo:m + w + hi, :]
    lead = v.shape[:-3]
    return tuple(np.stack([x.reshape(*lead, -1, 3), y.reshape(*lead, -1, 3)], axis=-3)
                 for x, y in ((top, bottom), (left, right)))


def _per_side(tb: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """Per-side values (..., 2, C) of (top, bottom) and (left, right) back in side order: top, right, bottom, left."""
    return np.stack([tb[..., 0, :], lr[..., 1, :], tb[..., 1, :], lr[..., 0, :]], axis=-2)


def _medians(strips) -> np.ndarray:
    return _per_side(*(np.median(x, axis=-2) for x in strips))


def side_bands(views: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per side (4) of one `band_view` or a stack of them (..., H, W, 3): median colour 1..depth px (of 112) inside
    (..., 4, 3), median colour just outside (..., 4, 3), luminance spread inside (..., 4)."""
    inside = _strips(views, -depth, -1)
    spread = _per_side(*(np.diff(np.percentile(x[..., 1], [10, 90], axis=-1), axis=0)[0][..., None] for x in inside))
    return _medians(inside), _medians(_strips(views, 2, 10)), spread[..., 0]


def is_plastic_edge(med_in: np.ndarray, med_out: np.ndarray) -> np.ndarray:
    """From median colours per side 1..3 px inside and just outside (as `side_bands` gives them): is this the edge
    of clear plastic (sleeve/toploader), i.e. just inside it the table shows through? A sleeve's film shows ~2.5 %
    of the width. One bool per view."""
    d = PLASTIC - med_out
    alpha = np.clip((d * (med_in - med_out)).sum(-1) / ((d * d).sum(-1) + 1e-6), 0.0, 0.4)
    residual = np.linalg.norm(med_in - (med_out + alpha[..., None] * d), axis=-1)
    return (residual < 14).sum(-1) >= 3


def is_plain_inside(bands4) -> np.ndarray:
    """From `side_bands(views, 4)`: is the band just inside all four sides one colour all round, without texture?
    One bool per view."""
    med_in, _, spread = bands4
    consistent = np.linalg.norm(med_in - np.median(med_in, axis=-2, keepdims=True), axis=-1).max(-1) < 30
    return consistent & (np.median(spread, axis=-1) < 40)


def is_border_band(bands4) -> np.ndarray:
    """From `side_bands(views, 4)`: does a card's plain printed border (3-5 % of its width) run just inside all four
    sides (one colour all round, unlike outside)? One bool per view."""
    med_in, med_out, _ = bands4
    differs = (np.linalg.norm(med_in - med_out, axis=-1) > 18).sum(-1) >= 3
    return is_plain_inside(bands4) & differs


class OutlineBands(NamedTuple):
    """What lies along the sides of a list of outlines, measured once for the selection rules and the ranker."""

    bands4: tuple  # side_bands(views, 4)
    border: np.ndarray  # (N,) bool: a card's printed border runs just inside all four sides
    plastic: np.ndarray  # (N,) bool: the outline is the edge of clear plastic

    def take(self, rows) -> "OutlineBands":
        rows = np.asarray(rows, int)
        return OutlineBands(tuple(b[rows] for b in self.bands4), self.border[rows], self.plastic[rows])


def outline_bands(rgb: np.ndarray, quads) -> OutlineBands:
    """`OutlineBands` of quads (N, 4, 2) in `rgb`."""
    if not len(quads):
        return OutlineBands((np.zeros((0, 4, 3)), np.zeros((0, 4, 3)), np.zeros((0, 4))), np.zeros(0, bool),
                            np.zeros(0, bool))
    views = np.stack([band_view(rgb, q) for q in quads])
    b4 = side_bands(views, 4)
    in3 = _medians(_strips(views, -3, -1))  # depth 3 differs from depth 4 only inside
    return OutlineBands(b4, is_border_band(b4), is_plastic_edge(in3, b4[1]))

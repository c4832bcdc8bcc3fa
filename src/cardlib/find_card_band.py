"""What lies along a quad's sides: a card's printed border band inside, clear plastic, or the table outside."""
from __future__ import annotations

import cv2
import numpy as np

PLASTIC = np.array([235.0, 238.0, 242.0])  # clear sleeve/toploader film seen against light: whitish, faintly blue
CARD_PX = (112, 160)  # (W, H) of the card in the normalised view: sides are sampled at this resolution
MARGIN = 12  # px of the normalised view kept outside the quad


def _view(rgb: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The quad warped to a CARD_PX portrait with MARGIN px of its surroundings (float32 RGB)."""
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


def band_view(rgb: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """What `side_bands` reads: the quad's normalised view (stack several to measure them at once)."""
    return _view(rgb, quad)


def side_bands(views: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per side (4) of one `band_view` or a stack of them (..., H, W, 3): median colour 1..depth px (of 112) inside
    (..., 4, 3), median colour just outside (..., 4, 3), luminance spread inside (..., 4)."""
    inside, outside = _strips(views, -depth, -1), _strips(views, 2, 10)
    med_in = _per_side(*(np.median(x, axis=-2) for x in inside))
    med_out = _per_side(*(np.median(x, axis=-2) for x in outside))
    spread = _per_side(*(np.diff(np.percentile(x[..., 1], [10, 90], axis=-1), axis=0)[0][..., None] for x in inside))
    return med_in, med_out, spread[..., 0]


def is_plastic_edge(bands3) -> bool:
    """From `side_bands(view, 3)`: is this the edge of clear plastic (sleeve/toploader), i.e. just inside it the
    table shows through? A sleeve's film shows ~2.5 % of the width."""
    med_in, med_out, _ = bands3
    d = PLASTIC - med_out
    alpha = np.clip((d * (med_in - med_out)).sum(1) / ((d * d).sum(1) + 1e-6), 0.0, 0.4)
    residual = np.linalg.norm(med_in - (med_out + alpha[:, None] * d), axis=1)
    return bool((residual < 14).sum() >= 3)


def is_border_band(bands4) -> bool:
    """From `side_bands(view, 4)`: does a card's plain printed border (3-5 % of its width) run just inside all four
    sides (one colour all round, unlike outside)?"""
    med_in, med_out, spread = bands4
    consistent = np.linalg.norm(med_in - np.median(med_in, axis=0), axis=1).max() < 30
    differs = (np.linalg.norm(med_in - med_out, axis=1) > 18).sum() >= 3
    return bool(consistent and differs and np.median(spread) < 40)


def plastic_edge(rgb: np.ndarray, quad: np.ndarray) -> bool:
    return is_plastic_edge(side_bands(band_view(rgb, quad), 3))


def border_band(rgb: np.ndarray, quad: np.ndarray) -> bool:
    return is_border_band(side_bands(band_view(rgb, quad), 4))

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


def _strips(v: np.ndarray, lo: int, hi: int) -> list[np.ndarray]:
    """Pixels of the four bands between lo and hi px outside the quad's sides (negative: inside), corners left out."""
    w, h, m = CARD_PX[0], CARD_PX[1], MARGIN
    cx0, cx1, cy0, cy1 = m + w // 6, m + w - w // 6, m + h // 8, m + h - h // 8
    if lo < 0:  # inside bands, measured inward from each side
        a, b = -hi, -lo
        top = v[m + a:m + b, cx0:cx1]
        bottom = v[m + h - b:m + h - a, cx0:cx1]
        left = v[cy0:cy1, m + a:m + b]
        right = v[cy0:cy1, m + w - b:m + w - a]
    else:
        top = v[m - hi:m - lo, cx0:cx1]
        bottom = v[m + h + lo:m + h + hi, cx0:cx1]
        left = v[cy0:cy1, m - hi:m - lo]
        right = v[cy0:cy1, m + w + lo:m + w + hi]
    return [x.reshape(-1, 3) for x in (top, right, bottom, left)]


def side_bands(rgb: np.ndarray, quad: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per side (4): median colour 1..depth px (of 112) inside, median colour just outside, luminance spread inside."""
    v = _view(rgb, quad)
    inside = _strips(v, -depth, -1)
    outside = _strips(v, 2, 10)
    med_in = np.array([np.median(x, axis=0) for x in inside])
    med_out = np.array([np.median(x, axis=0) for x in outside])
    spread = np.array([np.percentile(x[:, 1], 90) - np.percentile(x[:, 1], 10) for x in inside])
    return med_in, med_out, spread


def plastic_edge(rgb: np.ndarray, quad: np.ndarray) -> bool:
    """Is this outline the edge of clear plastic (sleeve/toploader), i.e. just inside it the table shows through?"""
    med_in, med_out, spread = side_bands(rgb, quad, 3)  # a sleeve's film shows ~2.5 % of the width
    d = PLASTIC - med_out
    alpha = np.clip((d * (med_in - med_out)).sum(1) / ((d * d).sum(1) + 1e-6), 0.0, 0.4)
    residual = np.linalg.norm(med_in - (med_out + alpha[:, None] * d), axis=1)
    return bool((residual < 14).sum() >= 3)


def border_band(rgb: np.ndarray, quad: np.ndarray) -> bool:
    """Does a card's plain printed border run just inside all four sides (one colour all round, unlike outside)?"""
    med_in, med_out, spread = side_bands(rgb, quad, 4)  # a card's printed border is 3-5 % of its width
    consistent = np.linalg.norm(med_in - np.median(med_in, axis=0), axis=1).max() < 30
    differs = (np.linalg.norm(med_in - med_out, axis=1) > 18).sum() >= 3
    return bool(consistent and differs and np.median(spread) < 40)

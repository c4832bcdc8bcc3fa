"""Quadrilateral geometry for card finding, vectorised over N quads: corner order, 5:7 aspect behind perspective,
convexity, overlap and corner error."""
from __future__ import annotations

import cv2
import numpy as np

CARD_ASPECT = 5 / 7  # width / height of a trading card (63 x 88 mm)
PRINTED_BORDER = 0.045  # a card's plain printed border: this fraction of its width on every side (~3 of 63 mm)


def side_lengths(q: np.ndarray) -> np.ndarray:
    """(N,4) side lengths; side i runs from corner i to corner i+1."""
    return np.linalg.norm(np.roll(q, -1, axis=1) - q, axis=2)


def stand_portrait(q: np.ndarray) -> np.ndarray:
    """A quad's corners (4, 2) rolled by one when it lies on its side (sides 0 and 2 the long ones), so that it
    stands portrait: its left side becomes the top."""
    s = side_lengths(np.asarray(q)[None])[0]
    return np.roll(q, 1, axis=0) if s[0] + s[2] > s[1] + s[3] else q


def order_geometric(quads: np.ndarray) -> np.ndarray:
    """Clockwise corners starting so that side 0-1 is a short side facing up (left, for a card on its side)."""
    q = np.asarray(quads, np.float64)
    single = q.ndim == 2
    q = q.reshape(-1, 4, 2)
    c = q.mean(1, keepdims=True)
    ang = np.arctan2(q[..., 1] - c[..., 1], q[..., 0] - c[..., 0])  # ascending = clockwise on screen (y down)
    q = np.take_along_axis(q, np.argsort(ang, axis=1)[..., None], axis=1)
    s = side_lengths(q)
    first = np.where(s[:, 0] + s[:, 2] <= s[:, 1] + s[:, 3], 0, 1)  # index of one short side
    mids = (q + np.roll(q, -1, axis=1)) / 2 - c
    mids /= np.linalg.norm(mids, axis=2, keepdims=True) + 1e-9
    up = mids[..., 1] + 1e-3 * mids[..., 0]  # most upward; ties (a card on its side) go to the left side
    rows = np.arange(len(q))
    start = np.where(up[rows, first] <= up[rows, first + 2], first, first + 2)
    idx = (start[:, None] + np.arange(4)) % 4
    out = np.take_along_axis(q, idx[..., None], axis=1).astype(np.float32)
    return out[0] if single else out


def card_aspect(quads: np.ndarray, focal: float) -> np.ndarray:
    """Width/height of the rectangle behind each quad (clockwise TL,TR,BR,BL, centred coords), undoing perspective."""
    q = np.asarray(quads, np.float64).reshape(-1, 4, 2)
    m = np.concatenate([q, np.ones(q.shape[:2] + (1,))], axis=2)
    m1, m2, m3, m4 = m[:, 0], m[:, 1], m[:, 3], m[:, 2]  # Zhang & He: m1=(0,0) m2=(w,0) m3=(0,h) m4=(w,h)
    c14 = np.cross(m1, m4)
    with np.errstate(divide="ignore", invalid="ignore"):
        k2 = (c14 * m3).sum(1) / (np.cross(m2, m4) * m3).sum(1)
        k3 = (c14 * m2).sum(1) / (np.cross(m3, m4) * m2).sum(1)
        n2, n3 = k2[:, None] * m2 - m1, k3[:, None] * m3 - m1
        w2 = (n2[:, 0] ** 2 + n2[:, 1] ** 2) / focal**2 + n2[:, 2] ** 2
        h2 = (n3[:, 0] ** 2 + n3[:, 1] ** 2) / focal**2 + n3[:, 2] ** 2
        return np.sqrt(w2 / h2)


FOCAL_RANGE = (0.6, 1.0, 1.6)  # times the nominal focal length: ultra-wide to zoomed lenses


def aspect_score(q: np.ndarray, focal: float, centre: np.ndarray) -> np.ndarray:
    """1 for a 5:7 rectangle behind the quad, falling to ~0 at +-25 % (side ratio or perspective-corrected).

    The camera is not known: perspective is undone for a range of focal lengths around `focal`, with the optical
    centre at the photo's `centre` or at the quad's own centre (a cropped photo, or a camera aimed at the card), and
    the reading closest to 5:7 counts."""
    s = side_lengths(q)
    ratios = [(s[:, 0] + s[:, 2]) / (s[:, 1] + s[:, 3] + 1e-9)]
    for c in (np.asarray(centre, np.float64), q.mean(1, keepdims=True)):
        ratios += [card_aspect(q - c, focal * k) for k in FOCAL_RANGE]
    err = np.full(len(q), np.inf)
    for r in ratios:
        r = np.where(np.isfinite(r) & (r > 0), r, 1e6)
        err = np.minimum(err, np.abs(np.log(np.minimum(r, 1 / r) / CARD_ASPECT)))
    return np.exp(-(err / 0.12) ** 2)


def convex_ok(q: np.ndarray) -> np.ndarray:
    """Convex, with interior angles a card can show under <= ~45 degrees of tilt (~41..139 degrees)."""
    u = np.roll(q, 1, axis=1) - q
    v = np.roll(q, -1, axis=1) - q
    cos = (u * v).sum(2) / (np.linalg.norm(u, axis=2) * np.linalg.norm(v, axis=2) + 1e-9)
    cross = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
    return (np.abs(cos) < 0.75).all(1) & ((cross > 0).all(1) | (cross < 0).all(1))


def quad_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two convex quadrilaterals (exact polygon areas)."""
    pa, pb = (cv2.convexHull(np.asarray(x, np.float32).reshape(-1, 1, 2)) for x in (a, b))
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    union = cv2.contourArea(pa) + cv2.contourArea(pb) - inter
    return float(inter / union) if union > 0 else 0.0


def corner_error(pred: np.ndarray, true: np.ndarray, orientation_agnostic: bool = True) -> float:
    """Mean corner distance as a fraction of the true card's diagonal; agnostic: best of the 4 cyclic shifts."""
    p, t = np.asarray(pred, np.float64).reshape(4, 2), np.asarray(true, np.float64).reshape(4, 2)
    diag = 0.5 * (np.linalg.norm(t[2] - t[0]) + np.linalg.norm(t[3] - t[1]))
    shifts = range(4) if orientation_agnostic else (0,)
    return float(min(np.linalg.norm(np.roll(p, -k, 0) - t, axis=1).mean() for k in shifts) / diag)

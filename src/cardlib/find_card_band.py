"""What lies along a quad's sides: a card's printed border band inside, clear plastic, or the table outside."""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from cardlib.find_card_geometry import stand_portrait

PLASTIC = np.array([235.0, 238.0, 242.0])  # clear sleeve/toploader film seen against light: whitish, faintly blue
CARD_PX = (112, 160)  # (W, H) of the card in the normalised view: sides are sampled at this resolution
MARGIN = 12  # px of the normalised view kept outside the quad
OUT = (2, 10)  # the band outside a side: 2..10 px of the normalised view beyond it
DEPTH = 4  # the band inside a side: up to this many px of the normalised view within it


class SideBands(NamedTuple):
    """The pixels along quads' sides in the normalised view (float32 RGB), corners left out: `tb` for the top and
    bottom sides (N, 2, 14, n, 3), `lr` for the left and right sides (N, 2, n, 14, 3). Along the 14, index k lies
    k - 10 px inside the side (negative: outside). Only these ~1/5 of the view's pixels are read from the photo."""

    tb: np.ndarray
    lr: np.ndarray


def _band_grid() -> np.ndarray:
    """View coordinates (x, y) of every SideBands pixel, in its layout order: (top, bottom, left, right) bands."""
    w, h, m = CARD_PX[0], CARD_PX[1], MARGIN
    cx, cy = np.arange(m + w // 6, m + w - w // 6), np.arange(m + h // 8, m + h - h // 8)
    depth = np.arange(-OUT[1], DEPTH)  # px inside the side (negative: outside)
    top, bottom = m + depth, m + h - 1 - depth
    left, right = m + depth, m + w - 1 - depth
    grids = [np.stack(np.meshgrid(cx, r, indexing="xy"), -1) for r in (top, bottom)]
    grids += [np.stack(np.meshgrid(c, cy, indexing="xy"), -1) for c in (left, right)]
    return np.concatenate([g.reshape(-1, 2) for g in grids]).astype(np.float64)


_GRID = _band_grid()


def _to_view(quad: np.ndarray) -> np.ndarray:
    """The homography taking the quad to the normalised CARD_PX portrait, MARGIN px in from the view's corner."""
    w, h = CARD_PX
    q = stand_portrait(np.asarray(quad, np.float32).reshape(4, 2))
    dst = np.float32([[0, 0], [w, 0], [w, h], [0, h]]) + MARGIN
    return cv2.getPerspectiveTransform(q, dst)


def sample_bands(rgb: np.ndarray, quads) -> SideBands:
    """`SideBands` of quads (N, 4, 2) in `rgb`: the view's band pixels read straight from the photo (bilinear,
    reflected at its edges), what a warp of the whole view would give there."""
    quads = np.asarray(quads, np.float64).reshape(-1, 4, 2)
    w, h = CARD_PX
    nx, ny, d = w - 2 * (w // 6), h - 2 * (h // 8), OUT[1] + DEPTH
    inv = np.stack([np.linalg.inv(_to_view(q)) for q in quads]) if len(quads) else np.zeros((0, 3, 3))
    pts = inv[:, :, :2] @ _GRID.T + inv[:, :, 2:]  # (N, 3, P)
    xy = (pts[:, :2] / pts[:, 2:]).astype(np.float32)
    px = cv2.remap(rgb, xy[:, 0], xy[:, 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) if len(quads) \
        else np.zeros((0, len(_GRID), 3), np.uint8)
    px = px.reshape(len(quads), -1, 3).astype(np.float32)
    n_tb = 2 * d * nx
    return SideBands(px[:, :n_tb].reshape(-1, 2, d, nx, 3), px[:, n_tb:].reshape(-1, 2, ny, d, 3))


def _strips(b: SideBands, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the bands between lo and hi px outside the quads' sides (negative: inside), corners left out:
    (top and bottom stacked, left and right stacked), each (N, 2, n, 3)."""
    a, z = OUT[1] - hi, OUT[1] - lo  # band index k lies k - 10 px inside its side
    n = len(b.tb)
    return b.tb[:, :, a:z].reshape(n, 2, -1, 3), b.lr[:, :, :, a:z].reshape(n, 2, -1, 3)


def _per_side(tb: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """Per-side values (..., 2, C) of (top, bottom) and (left, right) back in side order: top, right, bottom, left."""
    return np.stack([tb[..., 0, :], lr[..., 1, :], tb[..., 1, :], lr[..., 0, :]], axis=-2)


def _medians(strips) -> np.ndarray:
    return _per_side(*(np.median(x, axis=-2) for x in strips))


def side_bands(bands: SideBands, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per side (4) of each quad of `sample_bands`: median colour 1..depth px (of 112) inside (N, 4, 3), median
    colour just outside (N, 4, 3), luminance spread inside (N, 4)."""
    inside = _strips(bands, -depth, -1)
    spread = _per_side(*(np.diff(np.percentile(x[..., 1], [10, 90], axis=-1), axis=0)[0][..., None] for x in inside))
    return _medians(inside), _medians(_strips(bands, *OUT)), spread[..., 0]


def is_plastic_edge(med_in: np.ndarray, med_out: np.ndarray) -> np.ndarray:
    """From median colours per side 1..3 px inside and just outside (as `side_bands` gives them): is this the edge
    of clear plastic (sleeve/toploader), i.e. just inside it the table shows through? A sleeve's film shows ~2.5 %
    of the width. One bool per view."""
    d = PLASTIC - med_out
    alpha = np.clip((d * (med_in - med_out)).sum(-1) / ((d * d).sum(-1) + 1e-6), 0.0, 0.4)
    residual = np.linalg.norm(med_in - (med_out + alpha[..., None] * d), axis=-1)
    return (residual < 14).sum(-1) >= 3


def is_plain_inside(bands4) -> np.ndarray:
    """From `side_bands(bands, 4)`: is the band just inside all four sides one colour all round, without texture?
    One bool per view."""
    med_in, _, spread = bands4
    consistent = np.linalg.norm(med_in - np.median(med_in, axis=-2, keepdims=True), axis=-1).max(-1) < 30
    return consistent & (np.median(spread, axis=-1) < 40)


def is_border_band(bands4) -> np.ndarray:
    """From `side_bands(bands, 4)`: does a card's plain printed border (3-5 % of its width) run just inside all four
    sides (one colour all round, unlike outside)? One bool per view."""
    med_in, med_out, _ = bands4
    differs = (np.linalg.norm(med_in - med_out, axis=-1) > 18).sum(-1) >= 3
    return is_plain_inside(bands4) & differs


class OutlineBands(NamedTuple):
    """What lies along the sides of a list of outlines, measured once for the selection rules and the ranker."""

    bands4: tuple  # side_bands(bands, 4)
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
    bands = sample_bands(rgb, quads)
    b4 = side_bands(bands, DEPTH)
    in3 = _medians(_strips(bands, -3, -1))  # depth 3 differs from depth 4 only inside
    return OutlineBands(b4, is_border_band(b4), is_plastic_edge(in3, b4[1]))

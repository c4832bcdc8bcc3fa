"""Find cards in a photo: quadrilateral detection, perspective rectification to 5:7 portrait, orientation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Union

import cv2
import numpy as np
from PIL import Image, ImageOps

from cardlib.find_card_band import outline_bands
from cardlib.find_card_geometry import (CARD_ASPECT, aspect_score, card_aspect, convex_ok, corner_error, order_geometric,
                                        quad_iou, side_lengths, stand_portrait)
from cardlib.find_card_mask import card_probability, mask_hulls
from cardlib.find_card_rank import OUTLINE_MIN, rank_outlines
from cardlib.find_card_select import offer_cut_edge, select_cards

__all__ = ["CardCandidate", "both_orientations", "corner_error", "detect_quads", "find_card", "guess_upright",
           "load_rgb", "order_geometric", "quad_iou", "rectify"]

WORK_SIDE = 640  # long side of the working copy: detection cost stays flat whatever the camera resolution
OUTLINES_KEPT = 40  # outlines kept (best scores first): the card's is nearly always among them
OUTWARD_TRIES = 12  # best candidates also tried one printed border wider
PAIR_TRIES = 8  # best candidates also tried as two cards side by side (or one above the other): each half offered
BORDER_FRAC = 0.08  # the outward try: a card's printed border on each side (PRINTED_BORDER), ~8 % on the full width
CUT_SEEN_MIN = 0.6  # a card cut across by the photo's edge shows at least this much of its running sides
UPRIGHT_MIN_CONFIDENCE = 0.75  # below this find_card reports orientation as unknown

PhotoLike = Union[np.ndarray, Image.Image, str, Path]


@dataclass
class CardCandidate:
    """One card found in a photo: corners in photo pixels (TL,TR,BR,BL), its 5:7 crop, a 0..1 score."""

    corners: np.ndarray  # float32 (4, 2); reading order when `upright` is known, else geometric order
    crop: np.ndarray  # RGB uint8 (H, W, 3), 5:7 portrait, rotated to reading order when `upright` is known
    confidence: float
    upright: Optional[bool]  # did the card stand upright in the geometric order? None: not decided


def load_rgb(photo: PhotoLike) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an array, a PIL image or a path; EXIF orientation applied to PIL/paths."""
    if isinstance(photo, (str, Path)):
        if not Path(photo).is_file():
            raise FileNotFoundError(f"photo not found: {photo}")
        with Image.open(photo) as im:
            photo = ImageOps.exif_transpose(im).convert("RGB")
    if isinstance(photo, Image.Image):
        photo = np.asarray(ImageOps.exif_transpose(photo).convert("RGB"))
    arr = np.asarray(photo)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 16:
        raise ValueError(f"photo must be an RGB image of at least 16x16 pixels, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"photo must be uint8, got {arr.dtype}")
    return np.ascontiguousarray(arr[..., :3])


# ---------------------------------------------------------------- rectification and orientation


def rectify(photo: PhotoLike, corners: np.ndarray, out_size=(160, 112)) -> np.ndarray:
    """Perspective-warp the quad (TL,TR,BR,BL) to an RGB uint8 5:7 portrait of out_size (H, W)."""
    rgb = load_rgb(photo)
    q = stand_portrait(np.asarray(corners, np.float64).reshape(4, 2))
    h, w = int(out_size[0]), int(out_size[1])
    # warp to twice the size, then area-downsample: a straight warp of a 12 MP photo to 160 px aliases badly
    card_h = side_lengths(q[None])[0].max()
    shrink = 4.0 * h / max(card_h, 1.0)
    if shrink < 0.5:
        rgb = cv2.resize(rgb, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        q = (q + 0.5) * shrink - 0.5
    dst = np.float32([[0, 0], [2 * w, 0], [2 * w, 2 * h], [0, 2 * h]]) - 0.5
    m = cv2.getPerspectiveTransform(q.astype(np.float32), dst)
    big = cv2.warpPerspective(rgb, m, (2 * w, 2 * h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)


def both_orientations(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The crop as given and turned by 180 degrees (the two readings a 5:7 portrait allows)."""
    crop = np.asarray(crop)
    return crop, np.ascontiguousarray(crop[::-1, ::-1])


def guess_upright(crop: np.ndarray) -> tuple[bool, float]:
    """Is the crop upright? Name, HP and artwork make a card's upper half busier than its lower half.

    Measured (both turns of each card, 112x160): right 86 % of the time on rendered cards, 91 % on 258 real scans;
    at confidence >= 0.75 (77-84 % of crops) right 97-98 %."""
    g = cv2.cvtColor(np.asarray(crop, np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    g = cv2.resize(g, (112, 160), interpolation=cv2.INTER_AREA)
    # horizontal derivative: lettering and drawn outlines are dense vertical edges
    rows = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3))[8:-8, 8:-8].mean(axis=1)
    n = len(rows)
    top, bottom = rows[int(0.05 * n): int(0.45 * n)].mean(), rows[int(0.55 * n): int(0.95 * n)].mean()
    margin = (top - bottom) / (bottom + top + 1e-6)
    return bool(margin >= 0), float(min(1.0, 0.5 + abs(margin) * 2.5))


# ---------------------------------------------------------------- candidates


def _quads_from_hull(hull: np.ndarray, w: int, h: int) -> list:
    """Card quads from a convex hull: its four longest sides, extended (cut or rounded corners, a corner off the
    photo), or with three sides and the photo's edge, the readings of a card cut across (`_cut_card_quads`)."""
    peri = cv2.arcLength(hull, True)
    poly = cv2.approxPolyDP(hull, 0.015 * peri, True).reshape(-1, 2).astype(np.float64)
    if len(poly) < 4:
        return []
    nxt = np.roll(poly, -1, axis=0)
    length = np.linalg.norm(nxt - poly, axis=1)
    on_frame = np.zeros(len(poly), bool)  # the photo's edge clips the card there: not one of its sides
    for axis, limit in ((0, 0), (1, 0), (0, w - 1), (1, h - 1)):
        on_frame |= (np.abs(poly[:, axis] - limit) < 3) & (np.abs(nxt[:, axis] - limit) < 3)
    length[on_frame] = -1
    if (length > 0).sum() == 3 and on_frame.any():
        return _cut_card_quads(poly, nxt, length, w, h)
    if (length > 0).sum() < 4:
        return []
    if len(poly) == 4:
        return [poly]
    keep = np.sort(np.argsort(-length)[:4])
    p, d = poly[keep], nxt[keep] - poly[keep]
    pp, dp = np.roll(p, 1, axis=0), np.roll(d, 1, axis=0)
    den = dp[:, 0] * d[:, 1] - dp[:, 1] * d[:, 0]
    if (np.abs(den) < 1e-6 * (np.linalg.norm(d, axis=1) * np.linalg.norm(dp, axis=1))).any():
        return []
    t = ((p[:, 0] - pp[:, 0]) * d[:, 1] - (p[:, 1] - pp[:, 1]) * d[:, 0]) / den
    quad = pp + t[:, None] * dp
    # an intersection far from the hull means neighbouring "sides" were nearly parallel: not a card outline
    return [quad] if np.abs(quad - poly.mean(0)).max() < peri / 2 else []


def _meet(p, d, q, e) -> Optional[np.ndarray]:
    """Where the line p + t d meets the line q + u e (None when they are nearly parallel)."""
    den = d[0] * e[1] - d[1] * e[0]
    if abs(den) < 1e-6 * np.linalg.norm(d) * np.linalg.norm(e):
        return None
    t = ((q[0] - p[0]) * e[1] - (q[1] - p[1]) * e[0]) / den
    return p + t * d


def _cut_card_quads(poly: np.ndarray, nxt: np.ndarray, length: np.ndarray, w: int, h: int) -> list:
    """A card cut by the photo's edge across one side: three sides seen (two running off the photo, one across
    them). Its fourth side lies off the photo where a 5:7 card would end, the side across being the short or the
    long one: both readings, each with perspective undone (a nominal focal length, the optical centre at the
    photo's centre). Readings whose fourth side would show inside the photo, or that would hide more than 40 % of
    the card, are no cut card."""
    keep = np.sort(np.argsort(-length)[:3])
    p, d = poly[keep], nxt[keep] - poly[keep]
    u = d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9)
    pairs = [(0, 1), (0, 2), (1, 2)]
    a, c = max(pairs, key=lambda ij: abs(float(np.dot(u[ij[0]], u[ij[1]]))))  # the two sides running off the photo
    b = 3 - a - c
    corner_a, corner_c = _meet(p[a], d[a], p[b], d[b]), _meet(p[c], d[c], p[b], d[b])
    if corner_a is None or corner_c is None:
        return []
    across = float(np.linalg.norm(corner_c - corner_a))
    # each running side points away from the side across, towards where it leaves the photo
    mid = (poly[keep] + nxt[keep]) / 2
    dirs = [u[k] * np.sign(np.dot(mid[k] - cnr, u[k]) or 1.0) for k, cnr in ((a, corner_a), (c, corner_c))]
    centre, focal = np.array([w / 2, h / 2]), float(max(w, h))
    out = []
    for target in (CARD_ASPECT, 1 / CARD_ASPECT):  # across / running: the side across is short, or long
        run = across / target
        for _ in range(3):  # the run length that makes the rectangle behind the quad 5:7
            quad = np.array([corner_a, corner_c, corner_c + run * dirs[1], corner_a + run * dirs[0]])
            (x0, y0), (x1, y1) = quad[1] - quad[0], quad[2] - quad[1]
            if x0 * y1 - y0 * x1 < 0:  # clockwise on screen, the side across first
                quad = quad[[1, 0, 3, 2]]
            seen = float(card_aspect(quad[None] - centre, focal)[0])  # across / running, perspective undone
            if not np.isfinite(seen) or seen <= 0:
                break
            run *= seen / target
        quad = np.array([corner_a, corner_c, corner_c + run * dirs[1], corner_a + run * dirs[0]])
        far = (quad[2] + quad[3]) / 2
        seen_run = max(length[a], length[c])  # a card cut by more than ~40 % is beyond recognition anyway
        if (not (0 <= far[0] <= w - 1 and 0 <= far[1] <= h - 1) and seen_run >= CUT_SEEN_MIN * run
                and convex_ok(order_geometric(quad)[None])[0]):
            out.append(quad)
    return out


def _contour_candidates(edges: np.ndarray, min_long: float) -> tuple[list, list]:
    """Quads from the outlines and holes of an edge map (a card's plain border leaves a hole that traces it), and
    the straight pieces of those outlines (card sides survive things that touch the card and merge outlines)."""
    h, w = edges.shape
    quads, segs = [], []
    contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    for c in contours:
        extent = max(cv2.boundingRect(c)[2:]) if len(c) >= 4 else 0
        if extent < 0.3 * min_long:
            continue
        poly = cv2.approxPolyDP(c, 2.0, False).reshape(-1, 2)
        d = np.hypot(*np.diff(poly, axis=0).T)
        segs += [(*poly[k], *poly[k + 1]) for k in np.nonzero(d >= 0.3 * min_long)[0]]
        hull = cv2.convexHull(c)
        if extent < min_long or cv2.contourArea(hull) < 0.3 * min_long * min_long:
            continue
        quads += _quads_from_hull(hull, w, h)
        quads.append(cv2.boxPoints(cv2.minAreaRect(hull)))
    return quads, segs


def _colour_mag(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """|dx| + |dy| of the strongest colour channel (int16 Sobel outputs of a uint8 image cannot overflow it)."""
    mag = cv2.add(cv2.absdiff(dx, 0), cv2.absdiff(dy, 0))
    r, g, b = cv2.split(mag)
    return cv2.max(cv2.max(r, g), b).astype(np.int32)


def _edge_maps(blur: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Colour edge maps (fixed and texture-adaptive thresholds, fine and coarse: textured tables need the latter)
    and the colour gradient magnitude."""
    dx, dy = cv2.Sobel(blur, cv2.CV_16S, 1, 0), cv2.Sobel(blur, cv2.CV_16S, 0, 1)
    full_mag = _colour_mag(dx, dy)
    hi = float(np.clip(np.percentile(full_mag[::3, ::3], 93), 60, 400))  # edges stronger than the background's texture
    maps = [cv2.Canny(dx, dy, 20, 60), cv2.Canny(dx, dy, hi / 2.5, hi)]
    half = cv2.resize(blur, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    hdx, hdy = cv2.Sobel(half, cv2.CV_16S, 1, 0), cv2.Sobel(half, cv2.CV_16S, 0, 1)
    hhi = float(np.clip(np.percentile(_colour_mag(hdx[::2, ::2], hdy[::2, ::2]), 90), 50, 400))
    coarse = cv2.resize(cv2.Canny(hdx, hdy, hhi / 2.5, hhi), (blur.shape[1], blur.shape[0]),
                        interpolation=cv2.INTER_NEAREST)
    return [maps[0], maps[1], coarse], full_mag


def _merge_lines(segs: np.ndarray, mag: np.ndarray, max_lines: int = 40, max_segs: int = 200) -> list:
    """Group collinear segments (long, high-contrast ones first) into lines: [point, direction, t0, t1, length]."""
    if not len(segs):
        return []
    length = np.linalg.norm(segs[:, 2:] - segs[:, :2], axis=1)
    t = np.linspace(0.1, 0.9, 8)
    pts = np.round(segs[:, None, :2] + t[None, :, None] * (segs[:, None, 2:] - segs[:, None, :2])).astype(int)
    h, w = mag.shape
    contrast = mag[np.clip(pts[..., 1], 0, h - 1), np.clip(pts[..., 0], 0, w - 1)].mean(1)
    # a card's side is a long, strong edge; wood grain and weave give many weaker pieces
    order = np.argsort(-length * np.minimum(contrast / 120.0, 2.0))[:max_segs]
    P = np.zeros((0, 2))
    N = np.zeros((0, 2))
    lines = []
    for k in order:
        p, q = segs[k, :2], segs[k, 2:]
        hit = np.nonzero((np.abs(((p - P) * N).sum(1)) < 3) & (np.abs(((q - P) * N).sum(1)) < 3))[0]
        if len(hit):
            ln = lines[hit[0]]
            t = sorted((np.dot(p - ln[0], ln[1]), np.dot(q - ln[0], ln[1])))
            ln[2], ln[3], ln[4] = min(ln[2], t[0]), max(ln[3], t[1]), ln[4] + length[k]
            continue
        d = (q - p) / length[k]
        lines.append([p, d, 0.0, float(length[k]), float(length[k])])
        P, N = np.vstack([P, p]), np.vstack([N, [-d[1], d[0]]])
    lines.sort(key=lambda ln: -ln[4])
    return lines[:max_lines]


def _line_quads(lines, min_long: float, max_quads: int = 48) -> np.ndarray:
    """Quads whose four sides lie on four detected lines (two roughly parallel pairs) and are well covered by them."""
    n = len(lines)
    if n < 4:
        return np.zeros((0, 4, 2))
    P = np.array([ln[0] for ln in lines])
    D = np.array([ln[1] for ln in lines])
    T = np.array([[ln[2], ln[3]] for ln in lines])
    G = D @ D.T
    i, j = np.nonzero(np.triu(np.abs(G) > np.cos(np.deg2rad(25)), 1))
    if len(i) < 2:
        return np.zeros((0, 4, 2))
    # a side on line l between the lines of pair p runs over [lo, hi] of l; it must be well covered by the line's
    # detected extent. Checked per (line, pair) first (with a hair of slack: the quads' own check below decides):
    # only the few quads all four of whose sides pass are built.
    cross = D[:, None, 0] * D[None, :, 1] - D[:, None, 1] * D[None, :, 0]  # cross[l, m] = D_l x D_m
    rel = P[None, :, :] - P[:, None, :]  # rel[l, m] = P_m - P_l
    at = (rel[..., 0] * D[None, :, 1] - rel[..., 1] * D[None, :, 0]) / np.where(np.abs(cross) < 1e-9, 1e-9, cross)
    lo, hi = np.minimum(at[:, i], at[:, j]), np.maximum(at[:, i], at[:, j])  # (line, pair)
    overlap = np.clip(np.minimum(hi, T[:, 1:]) - np.maximum(lo, T[:, :1]), 0, None)
    side_ok = (overlap > 0.3 * (hi - lo) - 1e-6) & ((T[:, 1:] - T[:, :1]) - overlap < 0.25 * (hi - lo) + 4 + 1e-6)
    long_ok = (hi - lo) >= min_long - 1e-6
    a, b = np.nonzero(np.triu(np.abs(G[np.ix_(i, i)]) < np.cos(np.deg2rad(50)), 1))  # pairs of pairs, crossing
    keep = side_ok[i[a], b] & side_ok[j[a], b] & side_ok[i[b], a] & side_ok[j[b], a]
    keep &= long_ok[i[a], b] | long_ok[j[a], b] | long_ok[i[b], a] | long_ok[j[b], a]
    a, b = a[keep], b[keep]
    sides = np.stack([i[a], i[b], j[a], j[b]], axis=1)  # around the quad: L1, M1, L2, M2
    sp, sd = P[sides], D[sides]
    pp, dp = np.roll(sp, 1, axis=1), np.roll(sd, 1, axis=1)
    den = dp[..., 0] * sd[..., 1] - dp[..., 1] * sd[..., 0]
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    s = ((sp[..., 0] - pp[..., 0]) * sd[..., 1] - (sp[..., 1] - pp[..., 1]) * sd[..., 0]) / den
    corners = pp + s[..., None] * dp  # corner k = side k-1 meets side k
    # each line's detected extent must lie along its side and cover a good part of it
    c0, c1 = corners, np.roll(corners, -1, axis=1)
    u0 = ((c0 - sp) * sd).sum(2)
    u1 = ((c1 - sp) * sd).sum(2)
    lo, hi = np.minimum(u0, u1), np.maximum(u0, u1)
    ext = T[sides]
    side_len = hi - lo
    overlap = np.clip(np.minimum(hi, ext[..., 1]) - np.maximum(lo, ext[..., 0]), 0, None)
    outside = (ext[..., 1] - ext[..., 0]) - overlap
    ok = ((overlap > 0.3 * side_len) & (outside < 0.25 * side_len + 4)).all(1) & (side_len.max(1) >= min_long)
    ok[ok] = convex_ok(corners[ok])
    corners, cover = corners[ok], (overlap / (side_len + 1e-9))[ok]
    sl = side_len[ok]
    r = (sl[:, 0] + sl[:, 2]) / (sl[:, 1] + sl[:, 3] + 1e-9)
    shape = np.exp(-(np.log(np.minimum(r, 1 / np.maximum(r, 1e-9)) / CARD_ASPECT) / 0.2) ** 2)
    best = np.argsort(-(np.minimum(cover, 1).mean(1) * shape))[:max_quads]
    return corners[best]


# ---------------------------------------------------------------- edge evidence


def _fitside_lengths(img: np.ndarray, quads: np.ndarray, radius: int, grads=None, samples: int = 24):
    """Snap each side of each quad (N,4,2 clockwise) to the strongest straight edge within +-radius px.

    Returns refined quads, per-side support (fraction of visible samples on the fitted line; with `grads` = (gx, gy)
    also requiring the colour gradient to cross the side: texture has edges too, but not lined up) and strength."""
    n, (h, w) = len(quads), img.shape[:2]
    p0 = quads
    d = np.roll(quads, -1, axis=1) - quads
    normal = np.stack([d[..., 1], -d[..., 0]], axis=2) / (np.linalg.norm(d, axis=2, keepdims=True) + 1e-9)
    inward = ((quads.mean(1, keepdims=True) - p0) * normal).sum(2, keepdims=True) > 0
    normal = np.where(inward, -normal, normal)  # outward
    t = np.linspace(0.08, 0.92, samples)
    offs = np.arange(-radius, radius + 1, dtype=np.float64)
    base = p0[:, :, None, :] + t[None, None, :, None] * d[:, :, None, :]
    visible = ((base[..., 0] > 2) & (base[..., 0] < w - 3) & (base[..., 1] > 2) & (base[..., 1] < h - 3))
    pts = base[:, :, :, None, :] + offs[None, None, None, :, None] * normal[:, :, None, None, :]
    maps = pts.reshape(-1, len(offs), 2).astype(np.float32)
    prof = np.concatenate([cv2.remap(img, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                           for m in np.array_split(maps, len(maps) // 20000 + 1)])  # remap rows < 32767
    grad = np.linalg.norm(np.diff(prof, axis=1), axis=2).reshape(n, 4, samples, len(offs) - 1)
    j = grad.argmax(axis=3)
    v = np.take_along_axis(grad, j[..., None], axis=3)[..., 0]
    left = np.take_along_axis(grad, np.clip(j - 1, 0, len(offs) - 2)[..., None], axis=3)[..., 0]
    right = np.take_along_axis(grad, np.clip(j + 1, 0, len(offs) - 2)[..., None], axis=3)[..., 0]
    sub = np.clip(0.5 * (left - right) / (left - 2 * v + right - 1e-9), -0.5, 0.5)
    o = j + 0.5 - radius + sub  # edge offset along the outward normal
    strong = (v > 5.0) & visible
    # robust straight-line fit o = a + b t per side: best of a few sample pairs, then least squares on inliers
    pairs = [(0, samples - 1), (samples // 4, 3 * samples // 4), (0, samples // 2), (samples // 2, samples - 1),
             (samples // 8, 5 * samples // 8), (3 * samples // 8, 7 * samples // 8), (0, samples // 4),
             (3 * samples // 4, samples - 1)]
    inl, best = None, None
    for i0, i1 in pairs:
        b = (o[..., i1] - o[..., i0]) / (t[i1] - t[i0])
        cand = strong & (np.abs(o - (o[..., i0, None] + b[..., None] * (t - t[i0]))) < 1.5)
        cnt = cand.sum(-1)
        inl = cand if inl is None else np.where((cnt > best)[..., None], cand, inl)
        best = cnt if best is None else np.maximum(cnt, best)
    for tol in (1.5, 1.0):
        wt = inl.astype(np.float64)
        sw, st, so = wt.sum(-1) + 1e-9, (wt * t).sum(-1), (wt * o).sum(-1)
        den = sw * (wt * t * t).sum(-1) - st * st
        b = np.where(den > 1e-9, (sw * (wt * t * o).sum(-1) - st * so) / np.where(den > 1e-9, den, 1), 0.0)
        a = (so - b * st) / sw
        inl = strong & (np.abs(o - (a[..., None] + b[..., None] * t)) < tol)
    if grads is not None:
        e = (base + (a[..., None] + b[..., None] * t)[..., None] * normal[:, :, None, :]).reshape(-1, 1, 2)
        e = e.astype(np.float32)
        gx, gy = (cv2.remap(g, e[..., 0], e[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                  .reshape(n, 4, samples, -1) for g in grads)
        across = ((gx * normal[..., 0, None, None] + gy * normal[..., 1, None, None]) ** 2).sum(-1)
        inl &= across > 0.7 * ((gx**2 + gy**2).sum(-1) + 1e-6)
    seen = visible.sum(-1)
    support = np.where(seen >= samples // 3, inl.sum(-1) / np.maximum(seen, 1), 0.0)
    strength = (v * inl).sum(-1) / (inl.sum(-1) + 1e-9)
    ok = support >= 0.25  # too little evidence: leave the side where it was
    a, b = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    # refined side i: point p0 + a n, direction d + b n; corners are neighbouring sides' intersections
    lp, ld = p0 + a[..., None] * normal, d + b[..., None] * normal
    lpp, ldp = np.roll(lp, 1, axis=1), np.roll(ld, 1, axis=1)
    den = ldp[..., 0] * ld[..., 1] - ldp[..., 1] * ld[..., 0]
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    s = ((lp[..., 0] - lpp[..., 0]) * ld[..., 1] - (lp[..., 1] - lpp[..., 1]) * ld[..., 0]) / den
    refined = lpp + s[..., None] * ldp
    moved = np.linalg.norm(refined - quads, axis=2).max(1)
    refined = np.where((moved < 3 * radius + 2)[:, None, None], refined, quads)
    return refined, support, strength


def _halves(quads: np.ndarray) -> np.ndarray:
    """Both halves (M,4,2) of the quads (N,4,2 geometric order) shaped like two cards side by side (long sides
    lying rather level in the photo, about 10:7) or one above the other (long sides rather upright, about 14:5), cut
    across their long sides at the middle (in perspective): two cards a few pixels apart often give only their
    joint outline. Measured on simulated photos of seeds no fit used, with the ranker refitted: with other cards in
    view (500) an outline matching the card among the candidates 0.838 -> 0.882, found 0.752 -> 0.784, after the
    gallery check 0.814 -> 0.850 (21 photos gained, 3 lost); a card alone (900) 0.910 found either way (7 / 7),
    after the check 0.929 -> 0.932 (6 / 3)."""
    s = side_lengths(quads)
    sides02, sides13 = s[:, 0] + s[:, 2], s[:, 1] + s[:, 3]
    long02 = sides02 >= sides13
    ratio = np.maximum(sides02, sides13) / (np.minimum(sides02, sides13) + 1e-9)
    d = np.abs(np.roll(quads, -1, axis=1) - quads)  # (N,4,2) |dx|, |dy| of each side
    level = np.where(long02, d[:, 0, 0] + d[:, 2, 0] > d[:, 0, 1] + d[:, 2, 1],
                     d[:, 1, 0] + d[:, 3, 0] > d[:, 1, 1] + d[:, 3, 1])  # the long sides lie rather level
    pair = (level & (ratio > 1.2) & (ratio < 1.8)) | (~level & (ratio > 2.2) & (ratio < 3.4))
    unit = np.float32([[0, 0], [1, 0], [1, 1], [0, 1]])
    out = []
    for q, l02 in zip(quads[pair], long02[pair]):
        hmat = cv2.getPerspectiveTransform(unit, q.astype(np.float32))
        cut = np.float32([[0.5, 0], [0.5, 1]]) if l02 else np.float32([[0, 0.5], [1, 0.5]])
        a, b = cv2.perspectiveTransform(cut.reshape(-1, 1, 2), hmat).reshape(2, 2).astype(np.float64)
        out += [[q[0], a, b, q[3]], [a, q[1], q[2], b]] if l02 else [[q[0], q[1], b, a], [a, b, q[2], q[3]]]
    return np.array(out, np.float64).reshape(-1, 4, 2)


def _distinct(quads: np.ndarray, order, tol: float = 1.5) -> np.ndarray:
    """Indices (in `order`) of quads whose corners all lie within `tol` px of no earlier kept quad's: sides snapped
    to the same edges from different starts give the same outline many times over."""
    kept = []
    for k in order:
        if not kept or np.abs(quads[kept] - quads[k]).max(axis=2).max(axis=1).min() > tol:
            kept.append(k)
    return np.array(kept, int)


def _scores(q, support, strength, focal, centre) -> np.ndarray:
    """Confidence 0..1: straight edge evidence on all four sides times 5:7 consistency."""
    edges = 0.7 * support.mean(1) + 0.3 * support.min(1)
    contrast = np.minimum(1.0, strength.mean(1) / 15.0)
    return edges * (0.6 + 0.4 * contrast) * aspect_score(q, focal, centre) * convex_ok(q)


# ---------------------------------------------------------------- public API


class Outlines(NamedTuple):
    """A photo's candidate outlines (quad in geometric order, edge score; best score first) in its working copy."""

    cands: list
    small: np.ndarray  # the working copy
    scale: float  # working copy pixels per photo pixel
    mask: tuple  # the card-mask network's (probability map, working-copy pixels per map pixel)


def candidate_outlines(rgb: np.ndarray, min_height_frac: float = 0.15) -> Outlines:
    """Distinct card-like outlines of a photo, from its edges, its straight lines and the card-mask network's blobs
    (each snapped to the edges nearby)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, WORK_SIDE / max(h, w))
    small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    sh, sw = small.shape[:2]
    min_long = 0.8 * min_height_frac * sh  # a tilted card looks shorter than it is
    blur = cv2.GaussianBlur(small, (0, 0), 1.0)
    k = np.ones((3, 3), np.uint8)
    raw, segs = [], []
    maps, mag = _edge_maps(blur)
    for edges in maps:
        q, sg = _contour_candidates(cv2.dilate(edges, k), min_long)
        raw += q
        segs += sg
    mask = card_probability(small)
    for hull in mask_hulls(*mask, min_area=0.3 * min_long * min_long):
        raw += _quads_from_hull(hull, sw, sh) + [cv2.boxPoints(cv2.minAreaRect(hull))]
    raw = np.concatenate([np.array(raw, np.float64).reshape(-1, 4, 2),
                          _line_quads(_merge_lines(np.array(segs, np.float64).reshape(-1, 4), mag), min_long)])
    if not len(raw):
        return Outlines([], small, scale, mask)
    quads = order_geometric(raw).astype(np.float64)
    _, first = np.unique(np.round(quads.reshape(len(quads), -1) / 3), axis=0, return_index=True)
    quads = quads[np.sort(first)]
    img = blur.astype(np.float32)
    grads = (cv2.Sobel(img, cv2.CV_32F, 1, 0), cv2.Sobel(img, cv2.CV_32F, 0, 1))
    quads, _, _ = _fitside_lengths(img, quads, radius=6)
    quads = quads[_distinct(quads, range(len(quads)))]
    quads, support, strength = _fitside_lengths(img, quads, radius=3, grads=grads)
    focal = 1.0 * max(sh, sw)  # a phone's main camera: ~70 degree diagonal field of view
    scores = _scores(quads, support, strength, focal, np.array([sw / 2, sh / 2]))
    first = _distinct(quads, np.argsort(-scores))
    quads, scores = quads[first], scores[first]
    # the printed inner frame is often the stronger edge 3-5 % inside the card's cut edge: offer the cut edge too
    top = np.argsort(-scores)[:OUTWARD_TRIES]
    c = quads[top].mean(1, keepdims=True)
    wider, sup2, str2 = _fitside_lengths(img, c + (quads[top] - c) * (1 + BORDER_FRAC), radius=3, grads=grads)
    quads = np.concatenate([quads, wider])
    scores = np.concatenate([scores, _scores(wider, sup2, str2, focal, np.array([sw / 2, sh / 2]))])
    n_outlines = len(quads)
    halves = _halves(quads[:PAIR_TRIES])  # the best outlines (best first before the outward tries) as pairs of cards
    if len(halves):
        halves, _, _ = _fitside_lengths(img, halves, radius=6)
        halves, sup, stren = _fitside_lengths(img, halves, radius=3, grads=grads)
        quads = np.concatenate([quads, halves])
        scores = np.concatenate([scores, _scores(halves, sup, stren, focal, np.array([sw / 2, sh / 2]))])
    long_side = side_lengths(quads).max(1)
    keep = np.nonzero((scores >= 0.3) & (long_side >= min_long))[0]
    keep = keep[np.argsort(-scores[keep])]
    # the halves come on top of the outlines kept: a weak card outline must not give way to them
    keep = _distinct(quads, np.concatenate([_distinct(quads, keep[keep < n_outlines])[:OUTLINES_KEPT],
                                            keep[keep >= n_outlines]]))
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    cands = [(order_geometric(q).astype(np.float64), float(s)) for q, s in zip(quads[keep], scores[keep])]
    return Outlines(cands, small, scale, mask)


def detect_quads(rgb: np.ndarray, max_cards: int = 1, min_height_frac: float = 0.15,
                 alternatives: int = 0) -> list[tuple[np.ndarray, float]]:
    """Card quads (geometric order, photo pixels) with confidences, best first; then up to `alternatives` other
    strong outlines, overlapping allowed, for a caller that can tell a card from a look-alike (a gallery can)."""
    cands, small, scale, mask = candidate_outlines(rgb, min_height_frac)
    bands = outline_bands(small, [q for q, _ in cands])  # what lies along each outline: for the rules and the ranker
    ranked = rank_outlines(cands, select_cards(cands, small, max_cards, bands), small, mask, bands)
    if max_cards == 1:  # one card asked for: its cut edge is offered when its outline may be its printed panel
        ranked = [offer_cut_edge(r, cands, bands.border, small) for r in ranked]
    chosen = [r[0] for r in ranked]
    for q, s in [c for r in ranked for c in r[1:]] + cands:  # the ranker's next-best readings first
        if alternatives <= 0:
            break
        if s >= OUTLINE_MIN and all(quad_iou(q, c[0]) < 0.9 for c in chosen):
            chosen.append((q, s))
            alternatives -= 1
    return [(order_geometric((q + 0.5) / scale - 0.5), s) for q, s in chosen]


def find_card(photo: PhotoLike, out_size=(160, 112), max_cards: int = 1, min_height_frac: float = 0.15,
              alternatives: int = 0) -> list[CardCandidate]:
    """Cards in a photo, best first: corners, rectified 5:7 crop, confidence, orientation; [] when none.

    With `alternatives` > 0, up to that many other strong outlines follow the chosen cards (they may overlap them):
    a caller holding a gallery can check which outline shows a card (`cardlib.hashing.gallery_check`)."""
    if max_cards < 1:
        raise ValueError(f"max_cards must be >= 1, got {max_cards}")
    if alternatives < 0:
        raise ValueError(f"alternatives must be >= 0, got {alternatives}")
    if not 0 < min_height_frac <= 1:
        raise ValueError(f"min_height_frac must be in (0, 1], got {min_height_frac}")
    rgb = load_rgb(photo)
    found = []
    for q, conf in detect_quads(rgb, max_cards, min_height_frac, alternatives):
        crop = rectify(rgb, q, out_size)
        up, up_conf = guess_upright(crop)
        upright = up if up_conf >= UPRIGHT_MIN_CONFIDENCE else None
        if upright is False:
            q, crop = np.roll(q, 2, axis=0), both_orientations(crop)[1]
        found.append(CardCandidate(corners=q.astype(np.float32), crop=crop, confidence=round(conf, 4), upright=upright))
    return found

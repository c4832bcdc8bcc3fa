"""Camera simulator: a card image → a phone-like photo (with true corners and factor records), or a finder-like crop."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

BACKGROUNDS = ("wood", "desk", "fabric", "clutter", "playmat")
AIM_SPREAD = 0.2  # with other cards in view, the card's centre lies within this × its size of the photo's centre
_SKIN = ((224, 172, 140), (198, 140, 105), (160, 110, 80), (110, 74, 52), (236, 192, 164))


@dataclass
class Photo:
    """A simulated photo: RGB uint8 image, the printed card's TL, TR, BR, BL corners (x, y) in it, and its factors."""

    image: np.ndarray
    corners: np.ndarray
    factors: dict


def _p(rng, p: float) -> bool:
    return bool(rng.random() < min(1.0, max(0.0, p)))


# ---------------------------------------------------------------- backgrounds

def _noise(rng, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a random grid of `cells` per side, upsampled."""
    g = rng.random((max(2, cells * h // max(h, w) + 2), max(2, cells * w // max(h, w) + 2))).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng, h: int, w: int, kind: str) -> np.ndarray:
    """Procedural float32 RGB background of `kind` (made at half size where texture allows: it is cheap and soft)."""
    hh, ww = (h + 1) // 2, (w + 1) // 2
    f32 = np.float32
    if kind == "wood":
        ang = rng.uniform(0, np.pi)
        x, y = np.arange(ww, dtype=f32)[None, :], np.arange(hh, dtype=f32)[:, None]
        along = x * f32(np.cos(ang)) + y * f32(np.sin(ang))
        across = y * f32(np.cos(ang)) - x * f32(np.sin(ang))
        warp = 6 * _noise(rng, hh, ww, 3) + f32(0.6) * np.sin(along / f32(rng.uniform(20, 60)))
        grain = f32(0.5) + f32(0.5) * np.sin(across * f32(rng.uniform(0.25, 0.6)) + warp)
        t = f32(0.65) * grain * grain + f32(0.35) * _noise(rng, hh, ww, 24)
        dark = np.array([[92, 58, 32], [64, 42, 26], [128, 90, 54]][int(rng.integers(3))], f32)
        light = np.array([196, 146, 96], f32) * f32(rng.uniform(0.75, 1.1))
        img = dark + (light - dark) * t[..., None]
    elif kind == "fabric":
        fq = f32(rng.uniform(0.8, 1.6))
        weave = (f32(0.5) + f32(0.25) * np.sin(np.arange(ww, dtype=f32) * fq)[None, :]
                 + f32(0.25) * np.sin(np.arange(hh, dtype=f32) * fq)[:, None])  # separable: a cheap cross weave
        shade = (f32(0.75) + f32(0.35) * weave) * (f32(0.85) + f32(0.3) * _noise(rng, hh, ww, 6))
        img = shade[..., None] * rng.uniform(30, 200, 3).astype(f32)
    elif kind == "playmat":
        img = cv2.merge([f32(40) + f32(180) * _noise(rng, hh, ww, int(rng.integers(2, 6))) for _ in range(3)])
    else:  # desk or clutter: a flat surface with gentle mottling
        col = np.array([[235, 235, 230], [60, 60, 65], [150, 150, 155], [200, 185, 160], [40, 60, 100]]
                       [int(rng.integers(5))], f32)
        img = (f32(0.9) + f32(0.2) * _noise(rng, hh, ww, 5))[..., None] * col
    img = cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "clutter":
        for _ in range(int(rng.integers(2, 6))):  # papers, a phone, a pen, a mug rim
            x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            k = int(rng.integers(4))
            if k == 0:  # a sheet of paper or a card box
                c = tuple(float(v) for v in rng.uniform(170, 250) * rng.uniform(0.85, 1.0, 3))
                box = cv2.boxPoints(((x, y), (rng.uniform(0.25, 0.6) * w, rng.uniform(0.3, 0.7) * h), rng.uniform(0, 90)))
                cv2.fillConvexPoly(img, box.astype(np.int32), c, lineType=cv2.LINE_AA)
            elif k == 1:  # a phone
                c = tuple(float(v) for v in rng.uniform(10, 60, 3))
                box = cv2.boxPoints(((x, y), (0.16 * w, 0.34 * w), rng.uniform(0, 180)))
                cv2.fillConvexPoly(img, box.astype(np.int32), c, lineType=cv2.LINE_AA)
            elif k == 2:  # a pen
                c = tuple(float(v) for v in rng.uniform(20, 230, 3))
                a, ln = rng.uniform(0, np.pi), rng.uniform(0.12, 0.25) * w
                p0, p1 = (int(x), int(y)), (int(x + np.cos(a) * ln), int(y + np.sin(a) * ln))
                cv2.line(img, p0, p1, c, max(3, int(0.012 * w)), cv2.LINE_AA)
            else:  # a mug seen from above
                c = tuple(float(v) for v in rng.uniform(40, 240, 3))
                r = int(rng.uniform(0.07, 0.12) * w)
                cv2.circle(img, (int(x), int(y)), r, c, -1, cv2.LINE_AA)
                cv2.circle(img, (int(x), int(y)), int(r * 0.8), tuple(v * 0.4 for v in c), -1, cv2.LINE_AA)
    return img


# ---------------------------------------------------------------- the card object (card + sleeve)

def _card_object(card: np.ndarray, rng, d: float) -> tuple[np.ndarray, int, str]:
    """RGBA float32 of the card with rounded corners, in a transparent sleeve/toploader when drawn; and the padding."""
    h, w = card.shape[:2]
    r = rng.random()
    sleeve = "toploader" if r < 0.1 * d else ("sleeve" if r < 0.3 * d else "none")
    pad = {"none": 0, "sleeve": max(2, int(0.025 * w)), "toploader": max(4, int(0.09 * w))}[sleeve]
    obj = np.zeros((h + 2 * pad, w + 2 * pad, 4), np.float32)
    card_mask = np.zeros((h, w), np.uint8)
    rad = max(2, int(0.045 * w))  # real cards have ~3 mm corner radii
    cv2.rectangle(card_mask, (rad, 0), (w - 1 - rad, h - 1), 255, -1)
    cv2.rectangle(card_mask, (0, rad), (w - 1, h - 1 - rad), 255, -1)
    for cx, cy in ((rad, rad), (w - 1 - rad, rad), (w - 1 - rad, h - 1 - rad), (rad, h - 1 - rad)):
        cv2.circle(card_mask, (cx, cy), rad, 255, -1, cv2.LINE_AA)
    obj[pad:pad + h, pad:pad + w, :3] = card
    obj[pad:pad + h, pad:pad + w, 3] = card_mask / 255.0
    if sleeve != "none":
        plastic = np.array([232, 236, 242], np.float32)
        inner = obj[..., 3] < 0.99
        obj[..., :3][inner] = plastic
        obj[..., 3] = np.maximum(obj[..., 3], 0.12 if sleeve == "sleeve" else 0.22)
        obj[..., :3] = obj[..., :3] * 0.93 + plastic * 0.07  # the plastic film lifts the blacks a little
        t = 1 if sleeve == "sleeve" else max(2, pad // 6)
        H, W = obj.shape[:2]
        cv2.rectangle(obj, (0, 0), (W - 1, H - 1), (250, 250, 252, 0.7), t)  # the outer edge catches light
        if sleeve == "toploader":
            cv2.rectangle(obj, (t + 1, t + 1), (W - t - 2, H - t - 2), (120, 125, 130, 0.35), 1)
    return obj, pad, sleeve


def _project(pts: np.ndarray, rot_deg: float, tilt_deg: float, axis: float, dist: float) -> np.ndarray:
    """Card-plane points (centred, card units) → in-plane rotation, 3D tilt about `axis`, pinhole projection."""
    a = np.deg2rad(rot_deg)
    xy = pts @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float64)
    k = np.array([np.cos(axis), np.sin(axis), 0.0])
    t = np.deg2rad(tilt_deg)
    p3 = np.c_[xy, np.zeros(len(xy))]
    # Rodrigues rotation about the in-plane axis k
    p3 = p3 * np.cos(t) + np.cross(k, p3) * np.sin(t) + np.outer(p3 @ k, k) * (1 - np.cos(t))
    return p3[:, :2] * dist / (dist + p3[:, 2:3])


def _composite(canvas: np.ndarray, obj: np.ndarray, Hm: np.ndarray, alpha_out: np.ndarray | None = None) -> None:
    """Warp RGBA `obj` by homography `Hm` onto `canvas` in place, touching only the bounding box of its footprint."""
    oh, ow = obj.shape[:2]
    quad = cv2.perspectiveTransform(np.array([[[0, 0], [ow, 0], [ow, oh], [0, oh]]], np.float64), Hm)[0]
    x0, y0 = np.floor(quad.min(0)).astype(int)
    x1, y1 = np.ceil(quad.max(0)).astype(int) + 1
    H, W = canvas.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    if x1 <= x0 or y1 <= y0:
        return
    T = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64) @ Hm
    warped = cv2.warpPerspective(obj, T, (x1 - x0, y1 - y0), flags=cv2.INTER_AREA if np.linalg.det(Hm[:2, :2]) < 0.6
                                 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = warped[..., 3:4]
    roi = canvas[y0:y1, x0:x1]
    roi += (warped[..., :3] - roi) * a
    if alpha_out is not None:
        alpha_out[y0:y1, x0:x1] = np.maximum(alpha_out[y0:y1, x0:x1], a[..., 0])


# ---------------------------------------------------------------- photometric effects

def _glare(img, surface, rng, d, quad, f: dict):
    """Specular highlight (a soft elongated blob) on the glossy surface; sleeves add a straight reflection streak."""
    H, W = img.shape[:2]
    side = float(np.linalg.norm(quad[1] - quad[0]))
    if _p(rng, 0.45 * d):
        wts = rng.dirichlet(np.ones(4))
        c = wts @ quad
        s = rng.uniform(0.3, 0.95) * min(1.0, d)
        rx, ry = side * rng.uniform(0.08, 0.35), side * rng.uniform(0.04, 0.2)
        x0, x1 = int(max(0, c[0] - 3 * rx)), int(min(W, c[0] + 3 * rx))
        y0, y1 = int(max(0, c[1] - 3 * rx)), int(min(H, c[1] + 3 * rx))
        if x1 > x0 and y1 > y0:
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            a = rng.uniform(0, np.pi)
            u = (xx - c[0]) * np.cos(a) + (yy - c[1]) * np.sin(a)
            v = -(xx - c[0]) * np.sin(a) + (yy - c[1]) * np.cos(a)
            g = np.exp(-(u / rx) ** 2 - (v / ry) ** 2) * s * surface[y0:y1, x0:x1]
            g = np.clip(g * 1.6, 0, 1)[..., None]  # saturated core, like a blown-out highlight
            img[y0:y1, x0:x1] += (255.0 - img[y0:y1, x0:x1]) * g
            f["glare"], f["glare_strength"] = True, round(float(s), 3)
    if f.get("sleeve", "none") != "none" and _p(rng, 0.6):  # plastic reflects a window or lamp as a band
        ys, xs = np.nonzero(surface > 0)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        p0 = quad[int(rng.integers(4))] - (x0, y0)
        a = rng.uniform(0, np.pi)
        band = np.zeros((y1 - y0, x1 - x0), np.float32)
        dx, dy = np.cos(a) * 2 * side, np.sin(a) * 2 * side
        cv2.line(band, (int(p0[0] - dx), int(p0[1] - dy)), (int(p0[0] + dx), int(p0[1] + dy)), 1.0,
                 max(2, int(side * rng.uniform(0.03, 0.12))), cv2.LINE_AA)
        band = cv2.GaussianBlur(band, (0, 0), max(1.0, side * 0.02)) * surface[y0:y1, x0:x1] * np.float32(rng.uniform(0.2, 0.5))
        img[y0:y1, x0:x1] += (255.0 - img[y0:y1, x0:x1]) * band[..., None]
        f["sleeve_reflection"] = True


def _sheen(img, surface, rng, d, quad, f: dict):
    """Rainbow holo sheen: a hue ramp across the foil under a soft band of light."""
    if not _p(rng, 0.75 * d):
        return
    ys, xs = np.nonzero(surface > 0.5)
    if len(xs) == 0:
        return
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    a = rng.uniform(0, np.pi)
    side = float(np.linalg.norm(quad[1] - quad[0])) + 1
    u = ((xx - x0) * np.cos(a) + (yy - y0) * np.sin(a)) / side
    hue = ((u * rng.uniform(0.8, 2.0) + rng.random()) % 1.0) * 179
    hsv = np.stack([hue, np.full_like(hue, 200), np.full_like(hue, 255)], -1).astype(np.uint8)
    rainbow = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    s = rng.uniform(0.15, 0.5) * min(1.0, d)
    band = np.exp(-((u - rng.uniform(0.2, 0.8)) / rng.uniform(0.2, 0.5)) ** 2)
    a_map = (band * s * surface[y0:y1, x0:x1])[..., None]
    roi = img[y0:y1, x0:x1]
    roi += (np.maximum(roi, rainbow) - roi) * a_map  # lighten: foil only ever adds light
    f["holo_sheen"] = round(float(s), 3)


def _finger(img, rng, quad, f: dict):
    """A finger-like blob entering from outside the card and covering part of one edge."""
    H, W = img.shape[:2]
    side = float(np.linalg.norm(quad[1] - quad[0]))
    e = int(rng.integers(4))
    t = rng.uniform(0.15, 0.85)
    edge_pt = quad[e] * (1 - t) + quad[(e + 1) % 4] * t
    centre = quad.mean(0)
    out = edge_pt - centre
    out /= np.linalg.norm(out) + 1e-6
    tip = edge_pt - out * side * rng.uniform(0.05, 0.22)
    base = edge_pt + out * side * 2.5
    width = side * rng.uniform(0.22, 0.34)
    pts = np.array([base, tip])
    x0, y0 = np.maximum(np.floor(pts.min(0) - width), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(pts.max(0) + width), (W, H)).astype(int)
    if x1 <= x0 or y1 <= y0:
        return
    off = np.array([x0, y0])
    mask = np.zeros((y1 - y0, x1 - x0), np.float32)  # drawn only over its bounding box: fingers are cheap
    b, tp = tuple(int(v) for v in base - off), tuple(int(v) for v in tip - off)
    cv2.line(mask, b, tp, 1.0, max(3, int(width)), cv2.LINE_AA)
    cv2.circle(mask, tp, max(2, int(width / 2)), 1.0, -1, cv2.LINE_AA)
    shade = cv2.GaussianBlur(mask, (0, 0), max(1.0, width / 4))  # rounded: bright along the middle
    skin = np.array(_SKIN[int(rng.integers(len(_SKIN)))], np.float32)
    colour = skin * (0.55 + 0.5 * shade[..., None])
    m = cv2.GaussianBlur(mask, (0, 0), 1.0)[..., None]
    roi = img[y0:y1, x0:x1]
    roi += (colour - roi) * m
    f["occlusion"] = True


def _lighting(img, rng, d, f: dict):
    """Exposure, a lighting gradient, vignetting and colour temperature, in one multiply."""
    H, W = img.shape[:2]
    g = rng.uniform(-0.35, 0.35) * min(d, 1.5)
    a = rng.uniform(0, 2 * np.pi)
    # all of it is smooth: compute on a coarse grid and let cv2 upsample
    yy, xx = np.mgrid[-1:1:17j, -1:1:17j].astype(np.float32)
    vig = rng.uniform(0, 0.35) * min(d, 1.5)
    exposure = float(np.exp(rng.normal(0, 0.18 * d)))
    light = exposure * (1 + g * 0.5 * (xx * np.cos(a) + yy * np.sin(a))) * (1 - vig * (xx ** 2 + yy ** 2) / 2)
    kelvin = float(np.clip(6500 + rng.normal(0, 1500 * d), 2700, 10000))
    t = np.clip((kelvin - 6500) / 3500, -1, 1)  # warm light: more red, less blue
    gains = np.array([1 - 0.18 * t, 1.0, 1 + 0.18 * t], np.float32)
    cv2.multiply(img, cv2.resize(light[..., None] * gains, (W, H), interpolation=cv2.INTER_LINEAR), dst=img)
    f.update(exposure=round(exposure, 3), light_gradient=round(float(g), 3), vignette=round(float(vig), 3),
             colour_temperature_k=round(kelvin))


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    return np.random.default_rng(12345).standard_normal((1024, 1024), dtype=np.float32)


def _degrade(img: np.ndarray, rng, d: float, f: dict, scale: float = 1.0) -> np.ndarray:
    """Blur (motion or defocus), sensor noise and JPEG compression; returns uint8."""
    r = rng.random()
    f["blur"], f["blur_size"] = "none", 0.0
    if r < 0.2 * d:
        length = max(3, int((3 + rng.uniform(0, 9) * d) * scale)) | 1
        k = np.zeros((length, length), np.float32)
        a = rng.uniform(0, np.pi)
        c = length // 2
        cv2.line(k, (int(c - np.cos(a) * c), int(c - np.sin(a) * c)), (int(c + np.cos(a) * c), int(c + np.sin(a) * c)),
                 1.0, 1, cv2.LINE_AA)
        img = cv2.filter2D(img, -1, k / k.sum())
        f["blur"], f["blur_size"] = "motion", float(length)
    elif r < 0.4 * d:
        sigma = (0.7 + rng.uniform(0, 2.0) * d) * scale
        img = cv2.GaussianBlur(img, (0, 0), sigma)
        f["blur"], f["blur_size"] = "defocus", round(float(sigma), 2)
    sigma_n = float(rng.uniform(0, 8) * d)
    H, W = img.shape[:2]
    if sigma_n > 0.2:
        bank = _noise_bank()
        if H <= bank.shape[0] and W <= bank.shape[1]:  # a seeded window of a fixed bank: same statistics, no RNG cost
            oy, ox = int(rng.integers(bank.shape[0] - H + 1)), int(rng.integers(bank.shape[1] - W + 1))
            luma = bank[oy:oy + H, ox:ox + W] * np.float32(sigma_n)
        else:
            luma = rng.standard_normal((H, W), dtype=np.float32) * np.float32(sigma_n)
        chroma = cv2.resize(rng.standard_normal(((H + 3) // 4, (W + 3) // 4, 3), dtype=np.float32) * (sigma_n * 0.5),
                            (W, H), interpolation=cv2.INTER_NEAREST)
        img += chroma
        img += luma[..., None]
    f["noise"] = round(sigma_n, 2)
    out = cv2.convertScaleAbs(cv2.max(img, 0.0))  # saturating float -> uint8
    q = int(np.clip(95 - rng.uniform(0, 55) * d, 25, 95))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    f["jpeg_quality"] = q
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _light_and_touch(img, surface, rng, d: float, corners, f: dict, sleeve: str, holo: bool) -> None:
    """What photos and crops share: holo sheen, glare, a finger, lighting (in this order: it fixes the RNG stream)."""
    f["sleeve"] = sleeve
    if holo:
        _sheen(img, surface, rng, d, corners, f)
    _glare(img, surface, rng, d, corners, f)
    if _p(rng, 0.2 * d):
        _finger(img, rng, corners, f)
    _lighting(img, rng, d, f)


def _base_factors() -> dict:
    return dict(glare=False, glare_strength=0.0, holo_sheen=0.0, occlusion=False, sleeve_reflection=False)


def _as_rgb_float(card_img: np.ndarray) -> np.ndarray:
    card = np.asarray(card_img)
    if card.ndim != 3 or card.shape[2] not in (3, 4) or card.dtype != np.uint8:
        raise ValueError(f"card image must be RGB uint8 (H, W, 3), got {card.dtype} {card.shape}")
    return card[..., :3].astype(np.float32)


# ---------------------------------------------------------------- public API

def draw_neighbours(card_ids: list[str], card_id: str, rng: np.random.Generator,
                    count: int | None = None) -> list[str]:
    """Other cards lying beside this one in its photo: `count` of them, or by default none in most photos and one or
    two in about one in eight."""
    others = [c for c in card_ids if c != card_id]
    k = count if count is not None else int(rng.integers(0, 3)) if rng.random() < 0.2 else 0
    if not others or k == 0:
        return []
    return [str(c) for c in rng.choice(others, size=min(k, len(others)), replace=False)]


def simulate_photo(card_img: np.ndarray, seed: int, photo_size: tuple[int, int] = (480, 640), difficulty: float = 1.0,
                   neighbours: list[np.ndarray] | None = None, holo: bool = False) -> Photo:
    """A phone-like photo of `card_img` (deterministic per seed); `holo` enables the rainbow foil sheen."""
    d = float(difficulty)
    if d < 0:
        raise ValueError(f"difficulty must be >= 0, got {d}")
    rng = np.random.default_rng(seed)
    card = _as_rgb_float(card_img)
    PH, PW = int(photo_size[0]), int(photo_size[1])
    h, w = card.shape[:2]
    f = _base_factors()
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))] if d > 0 else "desk"
    img = _background(rng, PH, PW, kind)
    obj, pad, sleeve = _card_object(card, rng, d)
    dc = min(d, 1.0)
    scale = float(rng.uniform(0.75 - 0.6 * dc, 0.75 + 0.23 * dc))
    rot = float(np.clip(rng.normal(0, 10 * d), -30 * d, 30 * d))
    if _p(rng, 0.25 * dc):
        rot += 180.0
    elif _p(rng, 0.06 * dc):
        rot += 90.0 * rng.choice([-1, 1])
    rot = float((rot + 180.0) % 360.0 - 180.0)
    tilt = float(rng.uniform(0, 40 * d)) if d > 0 else 0.0
    axis = rng.uniform(0, 2 * np.pi)
    dist = h * rng.uniform(1.5, 3.0)
    k = scale * PH / h

    def place(offset):  # card-plane quad (printed corners + object corners) → photo pixels, before centring
        printed = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]]) + offset
        outer = printed + np.array([[-pad, -pad], [pad, -pad], [pad, pad], [-pad, pad]])
        return _project(printed, rot, tilt, axis, dist) * k, _project(outer, rot, tilt, axis, dist) * k

    printed, outer = place(np.zeros(2))
    bw, bh = printed.max(0) - printed.min(0)
    crop_allow = rng.uniform(0, 0.3) if _p(rng, 0.15 * d) else 0.0  # partial cropping by the frame
    centre = []
    for size, full in ((bw, PW), (bh, PH)):
        lo, hi = size / 2 - crop_allow * size, full - size / 2 + crop_allow * size
        if neighbours:  # other cards in view: the camera is aimed at this one, which lies nearest the photo's centre
            lo, hi = max(lo, full / 2 - AIM_SPREAD * size), min(hi, full / 2 + AIM_SPREAD * size)
        centre.append(rng.uniform(lo, hi) if hi > lo else full / 2)
    shift = np.array(centre) - (printed.max(0) + printed.min(0)) / 2
    src = np.array([[0, 0], [obj.shape[1], 0], [obj.shape[1], obj.shape[0]], [0, obj.shape[0]]], np.float32)
    n_neigh = 0
    if neighbours:
        gap = 0.06 * w
        slots = [np.array(v) for v in ((w + gap + 2 * pad, 0), (-w - gap - 2 * pad, 0), (0, h + gap + 2 * pad),
                                       (0, -h - gap - 2 * pad))]
        for j in rng.permutation(4)[:min(len(neighbours), int(rng.integers(1, 4)))]:
            nobj, npad, _ = _card_object(_as_rgb_float(neighbours[n_neigh % len(neighbours)]), rng, 0.0)
            _, nouter = place(slots[j])
            nsrc = np.array([[0, 0], [nobj.shape[1], 0], [nobj.shape[1], nobj.shape[0]], [0, nobj.shape[0]]], np.float32)
            _composite(img, nobj, cv2.getPerspectiveTransform(nsrc, (nouter + shift).astype(np.float32)))
            n_neigh += 1
    surface = np.zeros((PH, PW), np.float32)
    corners = (printed + shift).astype(np.float32)
    _composite(img, obj, cv2.getPerspectiveTransform(src, (outer + shift).astype(np.float32)), surface)
    _light_and_touch(img, surface, rng, d, corners, f, sleeve, holo)
    image = _degrade(img, rng, d, f)
    inside = cv2.intersectConvexConvex(corners, np.array([[0, 0], [PW, 0], [PW, PH], [0, PH]], np.float32))[0]
    f.update(angle_deg=round(tilt, 2), rotation_deg=round(rot, 2), upside_down=bool(abs(rot) > 90),
             scale=round(scale, 4), background=kind, neighbours=n_neigh,
             cropped=round(float(1 - inside / max(cv2.contourArea(corners), 1e-6)), 4), difficulty=d, seed=int(seed))
    return Photo(image=image, corners=corners, factors=f)


def simulate_crop(card_img: np.ndarray, seed: int, out_size: tuple[int, int] = (160, 112), difficulty: float = 1.0,
                  holo: bool = False) -> tuple[np.ndarray, dict]:
    """A rectified 5:7 crop with a card finder's residual errors (corner jitter, rotation, 180° flips, loose edges)."""
    d = float(difficulty)
    if d < 0:
        raise ValueError(f"difficulty must be >= 0, got {d}")
    rng = np.random.default_rng(seed)
    OH, OW = int(out_size[0]), int(out_size[1])
    card = _as_rgb_float(card_img)
    ch = int(OH * 1.5)  # work above output resolution so warping and blur act on real detail
    cw = int(round(ch * card.shape[1] / card.shape[0]))
    card = cv2.resize(card, (cw, ch), interpolation=cv2.INTER_AREA)
    f = _base_factors()
    obj, pad, sleeve = _card_object(card, rng, d)
    m = int(0.25 * ch)
    CH, CW = ch + 2 * m, cw + 2 * m
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    img = _background(rng, CH, CW, kind)
    surface = np.zeros((CH, CW), np.float32)
    Hm = np.array([[1, 0, m - pad], [0, 1, m - pad], [0, 0, 1]], np.float64)
    _composite(img, obj, Hm, surface)
    corners = np.array([[m, m], [m + cw, m], [m + cw, m + ch], [m, m + ch]], np.float32)
    _light_and_touch(img, surface, rng, d, corners, f, sleeve, holo)
    diag = float(np.hypot(ch, cw))
    err = rng.uniform(0, 0.04 * d)
    ang = rng.uniform(0, 2 * np.pi, 4)
    rad = rng.uniform(0, 1, 4) * err * diag
    quad = corners + np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
    centre = corners.mean(0)
    loose = float(rng.uniform(0, 0.05 * d)) if _p(rng, 0.3 * d) else 0.0  # finder kept some background
    rot = float(np.clip(rng.normal(0, 3 * d), -8 * d, 8 * d))
    a = np.deg2rad(rot)
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    quad = (quad - centre) @ R.T * (1 + loose) + centre
    flipped = _p(rng, min(0.5, 0.2 * d))
    if flipped:
        quad = quad[[2, 3, 0, 1]]
    dst = np.array([[0, 0], [OW, 0], [OW, OH], [0, OH]], np.float32)
    crop = cv2.warpPerspective(img, cv2.getPerspectiveTransform(quad.astype(np.float32), dst), (OW, OH),
                               flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    lowres = float(rng.uniform(1.0, 1.0 + 2.0 * d)) if _p(rng, 0.3 * d) else 1.0
    if lowres > 1.05:  # a card far from the camera has fewer pixels than the model input
        small = cv2.resize(crop, (max(8, int(OW / lowres)), max(8, int(OH / lowres))), interpolation=cv2.INTER_AREA)
        crop = cv2.resize(small, (OW, OH), interpolation=cv2.INTER_LINEAR)
    out = _degrade(crop, rng, d, f, scale=OH / 480.0)
    truth = corners[[2, 3, 0, 1]] if flipped else corners
    f.update(corner_error=round(float(np.linalg.norm(quad - truth, axis=1).mean() / diag), 4),
             rotation_deg=round(float((rot + (180.0 if flipped else 0.0) + 180.0) % 360.0 - 180.0), 2),
             flipped=flipped, upside_down=flipped,
             loose=round(loose, 4), lowres=round(lowres, 3), background=kind, difficulty=d, seed=int(seed))
    return out, f

"""Synthetic trading-card renderer: a deterministic, card-like 5:7 image per (seed, card)."""
from __future__ import annotations

import hashlib
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .catalogue import Card

TYPE_COLOURS = {"Grass": (118, 184, 84), "Fire": (232, 112, 64), "Water": (84, 150, 222), "Lightning": (244, 206, 64),
                "Psychic": (168, 104, 188), "Fighting": (188, 118, 72), "Darkness": (66, 76, 88), "Metal": (158, 164, 174),
                "Dragon": (196, 166, 62), "Colorless": (214, 208, 196), "Fairy": (232, 150, 190)}
_TRAINER_COLOUR = (196, 204, 214)
_BORDERS = ((246, 208, 64), (206, 208, 214), (236, 190, 60), (226, 226, 230))  # yellow and silver frames
_RARITY_MARK = {"Common": "circle", "Uncommon": "diamond"}  # anything else: a star
_ATTACKS = ("Tackle", "Ember", "Bubble", "Thunder Jolt", "Psybeam", "Slash", "Bite", "Iron Tail", "Dragon Claw",
            "Quick Attack", "Vine Whip", "Hydro Pump", "Flame Burst", "Gnaw", "Mind Shock", "Rock Smash")
_SENTENCES = ("Flip a coin. If heads, your opponent's Active Pokemon is now Paralyzed.",
              "This attack does 20 more damage for each Energy attached to this Pokemon.",
              "Discard an Energy from this Pokemon.", "Heal 30 damage from this Pokemon.",
              "During your next turn, this Pokemon can't attack.",
              "Search your deck for a card and put it into your hand. Then, shuffle your deck.",
              "Draw 3 cards.", "Your opponent's Active Pokemon is now Confused.")


def stable_seed(*parts) -> int:
    """A 31-bit seed from any printable parts; stable across processes (unlike hash())."""
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=4).digest(), "little") >> 1


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, int(size)))


def _lighter(c, f: float):
    return tuple(int(min(255, v + (255 - v) * f)) if f > 0 else int(v * (1 + f)) for v in c)


@lru_cache(maxsize=2048)
def _artwork(artwork_id: str, seed: int, h: int, w: int) -> np.ndarray:
    """Procedural 'illustration' shared by every print of one artwork: scenery blobs and a creature with eyes."""
    rng = np.random.default_rng(stable_seed("art", seed, artwork_id))
    c1, c2 = rng.integers(30, 230, 3), rng.integers(30, 230, 3)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    s = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    a = rng.uniform(0, 1)
    g = np.clip(a * t + (1 - a) * s, 0, 1)
    base = (c1 * (1 - g) + c2 * g).astype(np.uint8)
    scene = Image.fromarray(base)
    d = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(4, 9))):  # soft scenery: hills, clouds, light pools
        x, y = rng.uniform(-0.2, 1.0, 2) * (w, h)
        rx, ry = rng.uniform(0.15, 0.6, 2) * (w, h)
        d.ellipse((x, y, x + rx, y + ry), fill=tuple(int(v) for v in rng.integers(20, 255, 3)))
    scene = Image.fromarray(cv2.GaussianBlur(np.asarray(scene), (0, 0), max(1.0, w / 30)))
    d = ImageDraw.Draw(scene)
    body = tuple(int(v) for v in rng.integers(30, 250, 3))
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.45, 0.7) * h
    size = rng.uniform(0.16, 0.36) * w
    sx, sy = size * rng.uniform(0.7, 1.3), size * rng.uniform(0.6, 1.1)
    outline = tuple(int(v * 0.35) for v in body)
    accent = tuple(int(v) for v in rng.integers(30, 250, 3))
    for _ in range(int(rng.integers(2, 7))):  # limbs, ears, tail, fins
        ang = rng.uniform(0, 2 * np.pi)
        ex, ey = cx + np.cos(ang) * sx * 0.95, cy + np.sin(ang) * sy * 0.95
        r = size * rng.uniform(0.2, 0.5)
        col = body if rng.random() < 0.5 else accent
        if rng.random() < 0.5:
            d.ellipse((ex - r, ey - r * 0.6, ex + r, ey + r * 0.6), fill=col, outline=outline, width=2)
        else:
            tip = (ex + np.cos(ang) * r * 1.2, ey + np.sin(ang) * r * 1.2)
            d.polygon([(cx, cy), (ex - r * 0.5 * np.sin(ang), ey + r * 0.5 * np.cos(ang)), tip,
                       (ex + r * 0.5 * np.sin(ang), ey - r * 0.5 * np.cos(ang))], fill=col, outline=outline)
    if rng.random() < 0.5:
        d.ellipse((cx - sx, cy - sy, cx + sx, cy + sy), fill=body, outline=outline, width=2)
    else:
        d.rounded_rectangle((cx - sx, cy - sy, cx + sx, cy + sy), radius=size * 0.4, fill=body, outline=outline, width=2)
    pattern = rng.integers(0, 3)
    if pattern == 0:  # belly
        d.ellipse((cx - sx * 0.55, cy, cx + sx * 0.55, cy + sy * 0.8), fill=_lighter(body, 0.45))
    elif pattern == 1:  # spots
        for _ in range(int(rng.integers(3, 7))):
            px, py, pr = cx + rng.uniform(-0.6, 0.6) * sx, cy + rng.uniform(0, 0.7) * sy, size * rng.uniform(0.06, 0.14)
            d.ellipse((px - pr, py - pr, px + pr, py + pr), fill=accent)
    else:  # stripes
        for k in range(int(rng.integers(2, 4))):
            yk = cy + sy * (0.15 + 0.22 * k)
            d.line((cx - sx * 0.7, yk, cx + sx * 0.7, yk), fill=accent, width=max(2, int(size * 0.08)))
    hy = cy - sy * rng.uniform(0.2, 0.45)
    n_eyes = 2 if rng.random() < 0.85 else 1
    er = size * rng.uniform(0.1, 0.2)
    for k in range(n_eyes):  # eyes make it read as a creature at a glance
        ex = cx + (k - (n_eyes - 1) / 2) * sx * 0.7
        d.ellipse((ex - er, hy - er, ex + er, hy + er), fill=(250, 250, 250), outline=outline)
        d.ellipse((ex - er * 0.5, hy - er * 0.4, ex + er * 0.5, hy + er * 0.6), fill=(20, 20, 30))
    d.arc((cx - size * 0.25, hy, cx + size * 0.25, hy + size * 0.35), 20, 160, fill=outline, width=2)
    return np.asarray(scene, dtype=np.uint8)


@lru_cache(maxsize=8)
def _foil_texture(h: int, w: int) -> np.ndarray:
    """Iridescent rainbow foil (twice the card size, so each card takes a seeded window of it)."""
    yy, xx = np.mgrid[0:2 * h, 0:2 * w].astype(np.float32)
    hue = (xx * 0.9 + yy * 0.6) / (0.9 * w) + 0.12 * np.sin(xx / 7.0) * np.cos(yy / 9.0) + 0.08 * np.sin((xx - yy) / 3.0)
    hsv = np.stack([(hue % 1.0) * 179, np.full_like(hue, 150), 200 + 55 * np.sin(yy / 5.0 + xx / 11.0) ** 2], -1)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _set_symbol(d: ImageDraw.ImageDraw, set_id: str, x: float, y: float, r: float):
    rng = np.random.default_rng(stable_seed("set", set_id))
    n = int(rng.integers(3, 8))
    rot = rng.uniform(0, np.pi)
    pts = [(x + r * np.cos(rot + 2 * np.pi * k / n), y + r * np.sin(rot + 2 * np.pi * k / n)) for k in range(n)]
    d.polygon(pts, fill=(20, 20, 20))
    rr = r * rng.uniform(0.3, 0.55)
    d.ellipse((x - rr, y - rr, x + rr, y + rr), fill=(240, 240, 240))


def _rarity_mark(d: ImageDraw.ImageDraw, rarity: str, x: float, y: float, r: float):
    kind = _RARITY_MARK.get(rarity, "star")
    if kind == "circle":
        d.ellipse((x - r * 0.6, y - r * 0.6, x + r * 0.6, y + r * 0.6), fill=(15, 15, 15))
    elif kind == "diamond":
        d.polygon([(x, y - r), (x + r * 0.7, y), (x, y + r), (x - r * 0.7, y)], fill=(15, 15, 15))
    else:
        n = 2 if any(k in rarity for k in ("Ultra", "Double", "Illustration", "Secret", "Hyper")) else 1
        for k in range(n):
            cx = x + k * r * 2.1
            pts = [(cx + (r if i % 2 == 0 else r * 0.42) * np.sin(np.pi * i / 5),
                    y - (r if i % 2 == 0 else r * 0.42) * np.cos(np.pi * i / 5)) for i in range(10)]
            d.polygon(pts, fill=(15, 15, 15) if "Holo" not in rarity else (200, 160, 30))


def _energy(d: ImageDraw.ImageDraw, t: str, x: float, y: float, r: float):
    c = TYPE_COLOURS.get(t, TYPE_COLOURS["Colorless"])
    d.ellipse((x - r, y - r, x + r, y + r), fill=c, outline=(40, 40, 40))
    d.ellipse((x - r * 0.4, y - r * 0.4, x + r * 0.4, y + r * 0.4), fill=_lighter(c, 0.6))


def render_card(card: Card, size: tuple[int, int] = (350, 250), seed: int = 0) -> np.ndarray:
    """RGB uint8 (H, W, 3): frame, name/HP, artwork (shared by reprints), attacks, set symbol, number, rarity, foil."""
    H, W = int(size[0]), int(size[1])
    u = W / 250.0
    rng = np.random.default_rng(stable_seed("text", seed, card.artwork_id))  # text shared by reprints
    t = card.types[0] if card.types else "Colorless"
    panel = _TRAINER_COLOUR if card.supertype == "Trainer" else TYPE_COLOURS.get(t, TYPE_COLOURS["Colorless"])
    border = _BORDERS[stable_seed("border", card.set_id) % len(_BORDERS)]
    img = Image.new("RGB", (W, H), border)
    m = 0.045 * W
    grad = np.linspace(0.35, -0.1, H, dtype=np.float32)[:, None, None]
    pc = np.asarray(panel, np.float32)
    panel_img = np.where(grad > 0, pc + (255 - pc) * grad, pc * (1 + grad)).astype(np.uint8)
    mask = Image.new("L", (W, H), 0)
    ImageDraw.Draw(mask).rounded_rectangle((m, m, W - m, H - m), radius=0.05 * W, fill=255)
    img.paste(Image.fromarray(np.broadcast_to(panel_img, (H, W, 3)).copy()), mask=mask)
    d = ImageDraw.Draw(img)
    ink = (245, 245, 245) if t == "Darkness" and card.supertype != "Trainer" else (20, 20, 20)

    y = m + 0.012 * H
    if card.supertype == "Trainer":
        d.rectangle((m + 6 * u, y, m + 70 * u, y + 0.045 * H), fill=(60, 60, 70))
        d.text((m + 9 * u, y + 1), "TRAINER", font=font(0.036 * H), fill=(250, 250, 250))
        d.text((W - m - 8 * u, y + 1), "Item", font=font(0.036 * H), fill=ink, anchor="ra")
        y += 0.05 * H
    d.text((m + 8 * u, y), card.name, font=font(0.058 * H), fill=ink)
    if card.hp:
        _energy(d, t, W - m - 14 * u, y + 0.03 * H, 8 * u)
        d.text((W - m - 26 * u, y + 0.005 * H), f"HP{card.hp}", font=font(0.05 * H), fill=ink, anchor="ra")
    top = y + 0.075 * H
    ax0, ax1 = m + 10 * u, W - m - 10 * u
    ay1 = top + (0.36 if card.supertype != "Trainer" else 0.33) * H
    art = _artwork(card.artwork_id, seed, int(ay1 - top), int(ax1 - ax0))
    d.rectangle((ax0 - 3 * u, top - 3 * u, ax1 + 3 * u - 1, ay1 + 3 * u - 1), fill=_lighter(border, -0.25))
    art_box = (int(ax0), int(top), int(ax0) + art.shape[1], int(top) + art.shape[0])
    img.paste(Image.fromarray(art), art_box[:2])
    y = ay1 + 4 * u
    d.rectangle((ax0 + 10 * u, y, ax1 - 10 * u, y + 0.032 * H), fill=_lighter(border, 0.3))
    d.text((W / 2, y + 1), f"NO. {stable_seed(card.name) % 1000:03d}  {card.name[:9]} Pokemon  HT 1'04\"",
           font=font(0.026 * H), fill=(40, 40, 40), anchor="ma")
    y += 0.05 * H
    if card.supertype == "Pokémon":
        for _ in range(1 + int(rng.random() < 0.6)):
            cost = int(rng.integers(1, 4))
            for k in range(cost):
                _energy(d, t if k == 0 else "Colorless", ax0 + (6 + 13 * k) * u, y + 0.025 * H, 6 * u)
            d.text((ax0 + (10 + 13 * cost) * u, y + 0.004 * H), _ATTACKS[int(rng.integers(len(_ATTACKS)))],
                   font=font(0.048 * H), fill=ink)
            d.text((ax1, y + 0.004 * H), str(int(rng.integers(1, 20)) * 10), font=font(0.05 * H), fill=ink, anchor="ra")
            y += 0.065 * H
            if rng.random() < 0.7:
                sent = _SENTENCES[int(rng.integers(len(_SENTENCES)))]
                cut = sent.rfind(" ", 0, 46) if len(sent) > 46 else len(sent)
                for line in (sent[:cut], sent[cut:].strip()):
                    if line:
                        d.text((ax0, y), line, font=font(0.03 * H), fill=ink)
                        y += 0.036 * H
            y += 0.01 * H
        yb = H - m - 0.125 * H
        d.line((ax0, yb, ax1, yb), fill=_lighter(panel, -0.3), width=max(1, int(u)))
        d.text((ax0, yb + 3 * u), "weakness", font=font(0.026 * H), fill=ink)
        _energy(d, list(TYPE_COLOURS)[stable_seed("weak", card.artwork_id) % 9], ax0 + 58 * u, yb + 9 * u, 5 * u)
        d.text((ax1 - 26 * u, yb + 3 * u), "retreat", font=font(0.026 * H), fill=ink, anchor="ra")
        _energy(d, "Colorless", ax1 - 14 * u, yb + 9 * u, 5 * u)
    else:
        d.rectangle((ax0, y, ax1, H - m - 0.09 * H), fill=_lighter(panel, 0.55), outline=_lighter(panel, -0.3))
        for k in range(3):
            d.text((ax0 + 5 * u, y + 4 * u + k * 0.036 * H), _SENTENCES[(stable_seed(card.artwork_id) + k) % len(_SENTENCES)][:42],
                   font=font(0.029 * H), fill=(30, 30, 30))
    yb = H - m - 0.06 * H
    d.text((ax0, yb), f"Illus. {card.artwork_id[:14]}", font=font(0.026 * H), fill=ink)
    _set_symbol(d, card.set_id, ax0 + 6 * u, yb + 0.048 * H, 5.5 * u)
    d.text((ax0 + 15 * u, yb + 0.03 * H), card.collector_number, font=font(0.034 * H), fill=ink)
    tw = d.textlength(card.collector_number, font=font(0.034 * H))
    _rarity_mark(d, card.rarity, ax0 + 22 * u + tw, yb + 0.048 * H, 4.5 * u)
    d.text((ax1, yb + 0.03 * H), card.set_id.upper()[:6], font=font(0.03 * H), fill=ink, anchor="ra")
    out = np.asarray(img, dtype=np.uint8).copy()
    if card.variant != "normal":
        out = _apply_foil(out, card, seed, art_box, H, W)
    return out


def _apply_foil(out: np.ndarray, card: Card, seed: int, art_box, H: int, W: int) -> np.ndarray:
    """holo: foil over the artwork; reverse_holo: foil over the card body but not the artwork."""
    rng = np.random.default_rng(stable_seed("foil", seed, card.card_id))
    oy, ox = int(rng.integers(0, H)), int(rng.integers(0, W))
    foil = _foil_texture(H, W)[oy:oy + H, ox:ox + W].astype(np.float32)
    x0, y0, x1, y1 = art_box
    mask = np.zeros((H, W, 1), np.float32)
    if card.variant == "holo":
        mask[y0:y1, x0:x1] = 0.55
    else:
        mask[:] = 0.4
        mask[y0:y1, x0:x1] = 0.0
    o = out.astype(np.float32)
    # overlay-style blend keeps the print's structure while shifting hue and brightness like foil
    mixed = o + (foil - 150.0) * 0.9
    return np.clip(o + (mixed - o) * mask, 0, 255).astype(np.uint8)

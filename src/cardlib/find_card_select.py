"""Choosing cards among candidate outlines: duplicates, binder pages around cards, sleeves and toploaders around
cards, frames printed on cards."""
from __future__ import annotations

import cv2
import numpy as np

from cardlib.find_card_band import OutlineBands, is_plain_inside, sample_bands, side_bands
from cardlib.find_card_geometry import CARD_ASPECT, PRINTED_BORDER, order_geometric, quad_iou, side_lengths

MIN_CONFIDENCE = 0.45  # below this a candidate is texture, not a card (tuned on card-free photos)
AIM_MARGIN = 0.3  # clear cards within this of the best score are equally likely the one meant: the most central wins
CLEAR_MIN = 0.75  # a clear card: what the rules trust to be one when several are in view
BORDERED_MIN = 0.75  # an outline with a card's printed border all round wins among nested ones this close in score
PANEL_TRIES = 3  # the best outlines of an object that may be its printed panel (offer_cut_edge)


def _area(q) -> float:
    return float(cv2.contourArea(np.asarray(q, np.float32)))


def _inside(inner, outer) -> float:
    """Fraction of `inner` covered by `outer`."""
    inter, _ = cv2.intersectConvexConvex(np.asarray(inner, np.float32), np.asarray(outer, np.float32))
    return float(inter / max(_area(inner), 1e-6))


def _band_stats(rgb: np.ndarray, outer, inner) -> np.ndarray:
    """Mean colour and spread of the green channel (~luminance) in the band between two nested quads."""
    o, i = np.round(outer).astype(np.int32), np.round(inner).astype(np.int32)
    h, w = rgb.shape[:2]
    x0, y0 = np.clip(o.min(0), 0, [w, h])
    x1, y1 = np.clip(o.max(0) + 1, 0, [w, h])
    if x1 - x0 < 1 or y1 - y0 < 1:  # wholly outside the photo
        return np.full(4, np.nan, np.float32)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)  # the outer quad's bounding box is all the band can cover
    cv2.fillPoly(mask, [(o - [x0, y0]).astype(np.int32)], 1)
    cv2.fillPoly(mask, [(i - [x0, y0]).astype(np.int32)], 0)
    px = rgb[y0:y1, x0:x1][mask.astype(bool)].astype(np.float32)
    return np.append(px.mean(0), px[:, 1].std()) if len(px) >= 8 else np.full(4, np.nan, np.float32)


def _is_sleeve(rgb, outer, inner) -> bool:
    """Is the band between outer and inner the background seen through clear plastic, not a card's printed border?

    Physical sizes decide first: a printed border leaves ~84 % of the card inside it, a sleeve holds a card of ~92 %
    of its area, a toploader ~72 %. Then the band must look like the outside, lightened by plastic, texture and all."""
    ratio = _area(inner) / max(_area(outer), 1e-6)
    if 0.8 < ratio < 0.885:
        return False
    f = np.sqrt(1 / ratio)
    c_out = outer.mean(0)
    ring, out = _band_stats(rgb, outer, inner), _band_stats(rgb, c_out + (outer - c_out) * f, outer)
    if np.isnan(np.concatenate([ring, out])).any():
        return False
    plastic = np.array([235.0, 238.0, 242.0])
    alpha = np.clip(np.dot(ring[:3] - out[:3], plastic - out[:3]) / (np.sum((plastic - out[:3]) ** 2) + 1e-6), 0, 0.3)
    residual = np.linalg.norm(ring[:3] - (out[:3] + alpha * (plastic - out[:3])))
    return bool(residual < 20 and ring[3] >= 0.5 * out[3] - 3)


def _same_orientation(a, b) -> bool:
    """Do two quads (geometric order: side 0 is short) stand the same way, both portrait or both on their side?"""
    da, db = a[1] - a[0], b[1] - b[0]
    return abs(np.dot(da, db)) > 0.8 * np.linalg.norm(da) * np.linalg.norm(db)


def ring_gaps(outers, inners, lo: float = 0.01, hi: float = 0.05) -> np.ndarray:
    """(len(outers), len(inners)) bool: does the outer quad run outside the inner one at a border's width (lo..hi of
    its long side) on all four sides? Quads in geometric order, so side k of one faces side k of the other."""
    o, i = np.asarray(outers, np.float64).reshape(-1, 4, 2), np.asarray(inners, np.float64).reshape(-1, 4, 2)
    d = np.roll(o, -1, axis=1) - o
    n = np.stack([d[..., 1], -d[..., 0]], axis=2) / (np.linalg.norm(d, axis=2, keepdims=True) + 1e-9)
    mid = (i + np.roll(i, -1, axis=1)) / 2
    gap = np.abs(((mid[None] - o[:, None]) * n[:, None]).sum(3)) / side_lengths(o).max(1)[:, None, None]
    return ((gap >= lo) & (gap <= hi)).all(2)


def _ring_gap(outer, inner) -> bool:
    return bool(ring_gaps(outer, inner)[0, 0])


def _disjoint(kept, idx) -> list:
    """Greedy by score: outlines that neither overlap nor contain one another (a card's printed frame must not
    hide it)."""
    out = []
    for j in sorted(idx, key=lambda j: -kept[j][1]):
        if all(quad_iou(kept[j][0], kept[k][0]) < 0.1 and _inside(kept[j][0], kept[k][0]) < 0.5 for k in out):
            out.append(j)
    return out


def _holds_cards(kept, areas, i, inside) -> bool:
    """Is outline i a group of cards: two or more cards standing its way inside it, or two cards filling it, each
    about half of it (side by side, two cards look 5:7 together, on their side)? A card's printed halves (name and
    artwork above a line, text below) can look like the latter; measured on simulated photos, treating them as a
    group loses no single card and recovers neighbouring cards seen as one outline."""
    along = _disjoint(kept, [j for j in inside if _same_orientation(kept[j][0], kept[i][0])])
    if len(along) >= 2 and sum(areas[j] for j in along) > 0.4 * areas[i]:
        return True
    halves = _disjoint(kept, [j for j in inside if 0.35 < areas[j] / areas[i]])
    return len(halves) >= 2 and sum(areas[j] for j in halves) > 0.75 * areas[i]


def _aimed_first(kept, alive, shape) -> list:
    """Outlines best first, except that among clear cards about as clear as the best, the one nearest the photo's
    centre (the one the camera was aimed at) comes first."""
    order = sorted(range(len(kept)), key=lambda i: -kept[i][1])
    live = [i for i in order if alive[i]]
    clear = [i for i in live if kept[i][1] >= max(CLEAR_MIN, kept[live[0]][1] - AIM_MARGIN)] if live else []
    if len(clear) < 2:
        return order
    centre = np.array([shape[1], shape[0]], np.float64) / 2
    aimed = min(clear, key=lambda i: np.linalg.norm(np.asarray(kept[i][0]).mean(0) - centre))
    return [aimed] + [i for i in order if i != aimed]


def cut_edge_of_panel(panel: np.ndarray) -> np.ndarray:
    """The card's cut edge (geometric order) around its printed panel (the quad inside its plain border, geometric
    order): the card rectangle mapped through the panel's homography, so perspective is kept."""
    w, h, m = 1.0, 1.0 / CARD_ASPECT, PRINTED_BORDER
    inner = np.float32([[m, m], [w - m, m], [w - m, h - m], [m, h - m]])
    hmat = cv2.getPerspectiveTransform(inner, np.asarray(panel, np.float32).reshape(4, 2))
    card = cv2.perspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]).reshape(-1, 1, 2), hmat)
    return order_geometric(card.reshape(4, 2)).astype(np.float64)


def offer_cut_edge(ranked: list, cands: list, border: np.ndarray, rgb: np.ndarray) -> list:
    """`ranked` (one object's outlines, best first) with the card's cut edge offered second when one of its best
    PANEL_TRIES outlines may be its printed panel: no printed border inside it, a plain band all round outside it
    where a card's border would lie. A silver or white border on a light table leaves no edge to find, so the edge
    is where a card's border would end; it is offered to the gallery check, not chosen: a card on a plain table
    looks the same. Measured on 600 simulated photos: 557 -> 563 found after the gallery check, none lost without
    it. Not only the best outline is tried: a panel whose own edge is plain (one energy colour) reads as a card with
    a border and may rank first, the panel's other readings next (2,200 simulated photos: 1 gained, 1 lost)."""
    rows = {id(c): k for k, c in enumerate(cands)}
    panel = next((c for c in ranked[:PANEL_TRIES] if id(c) in rows and not border[rows[id(c)]]), None)
    if panel is None:
        return ranked
    h, w = rgb.shape[:2]
    card = cut_edge_of_panel(panel[0])
    if (card < -2).any() or (card[:, 0] > w + 1).any() or (card[:, 1] > h + 1).any():
        return ranked
    plain = bool(is_plain_inside(side_bands(sample_bands(rgb, card[None]), 4))[0])  # a border's band, or the table
    return ranked[:1] + [(card, panel[1])] + ranked[1:] if plain else ranked


def select_cards(cands: list, rgb: np.ndarray, max_cards: int, bands: OutlineBands) -> list:
    """Drop duplicates, groups (a binder page around cards), sleeves around cards, and anything printed on a card.

    `cands`: (quad, score) with score >= some floor; `bands`: their `outline_bands`; returns them best first."""
    kept, rows = [], []
    for r in sorted(range(len(cands)), key=lambda r: -cands[r][1]):
        if all(quad_iou(cands[r][0], k[0]) < 0.95 for k in kept):  # a printed frame or a sleeve overlaps its card ~0.85-0.92
            kept.append(cands[r])
            rows.append(r)
    border, plastic = bands.border[rows], bands.plastic[rows]
    areas = [_area(c[0]) for c in kept]
    alive = [True] * len(kept)
    for i in sorted(range(len(kept)), key=lambda i: -areas[i]):
        outer, score = kept[i]
        if not alive[i] or score < 0.6 * MIN_CONFIDENCE:  # a faint card outline still vouches for what is on it
            continue
        nested = [j for j in range(len(kept)) if j != i and alive[j] and areas[j] < 0.98 * areas[i]
                  and _inside(kept[j][0], outer) > 0.9]
        cards = [j for j in nested if kept[j][1] >= MIN_CONFIDENCE and 0.08 < areas[j] / areas[i] < 0.62]
        if _holds_cards(kept, areas, i, cards):
            alive[i] = False  # a binder page or a pile: the cards inside are the answer
            continue
        # one object seen as nested outlines (sleeve, card, printed frame, and mixtures): keep the card's
        chain = [i] + [j for j in nested if areas[j] >= 0.6 * areas[i] and _same_orientation(kept[j][0], outer)]
        top = max(kept[k][1] for k in chain)
        floor = min(top, max(0.6 * top, MIN_CONFIDENCE))  # the card's outline must be one that could be reported
        strong = sorted((k for k in chain if kept[k][1] >= floor), key=lambda k: -areas[k])
        best = strong[-1]
        eligible = set(strong)
        # in a toploader the sides of plastic, card and printed frame mix into outlines of every size: the one with
        # a card's plain printed border just inside all four sides is the card. Unless a strong outline runs a
        # border's width outside it all round: then it may be a printed frame inside its card, or a card in a
        # sleeve, and the rules below decide.
        bordered = next((k for k in sorted(chain, key=lambda k: -areas[k]) if kept[k][1] >= BORDERED_MIN * top
                         and not any(_ring_gap(kept[m][0], kept[k][0]) for m in strong if areas[m] > 1.02 * areas[k])
                         and border[k] and not plastic[k]), None)
        if bordered is not None:  # the largest such outline
            best, eligible = bordered, set()
        for k in sorted(chain, key=lambda k: -areas[k]):  # the outermost good outline not of clear plastic
            if k not in eligible:
                continue
            held = [j for j in chain if 0.6 <= areas[j] / areas[k] <= 0.8 or (j in strong and
                    0.885 <= areas[j] / areas[k] < 0.96 and border[j])]  # toploader, sleeve
            sleeved = [j for j in held if _is_sleeve(rgb, kept[k][0], kept[j][0])]
            if not sleeved and not plastic[k]:
                best = k
                break
            eligible.update(sleeved)  # a card seen through a toploader's thick plastic may have weaker edges
        for j in chain:
            alive[j] = j == best
        for j in nested:  # boxes printed on the card lie across it or are weaker; a card on a larger thing is not.
            # Only an outline that could be reported speaks for what is on it: a faint large rectangle (a mat, a
            # book) must not hide a clear card lying across it.
            if j not in chain and (kept[j][1] < kept[best][1] or (kept[best][1] >= MIN_CONFIDENCE and
                                                                    not _same_orientation(kept[j][0], kept[best][0]))):
                alive[j] = False
    chosen = []
    for i in _aimed_first(kept, alive, rgb.shape):
        if alive[i] and kept[i][1] >= MIN_CONFIDENCE and all(
                quad_iou(kept[i][0], c[0]) < 0.1 and _inside(kept[i][0], c[0]) < 0.5 for c in chosen):
            chosen.append(kept[i])
        if len(chosen) == max_cards:
            break
    return chosen

"""find_card on synthetic photos with known corners: the card is drawn and warped into a textured background here."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from cardlib.find_card import (both_orientations, corner_error, find_card, guess_upright, order_geometric, quad_iou,
                               rectify)
from cardlib.find_card_band import outline_bands
from cardlib.find_card_geometry import aspect_score
from cardlib.find_card_select import select_cards

H, W = 480, 640


def card_image(seed: int, h: int = 350, w: int = 250) -> np.ndarray:
    """A card-like picture: plain border, coloured frame, name bar, textured artwork, lines of 'text' below."""
    rng = np.random.default_rng(seed)
    card = np.empty((h, w, 3), np.uint8)
    card[:] = (236, 204, 70) if seed % 2 else (210, 212, 218)
    b = int(0.045 * w)
    cv2.rectangle(card, (b, b), (w - b - 1, h - b - 1), tuple(int(v) for v in rng.integers(90, 220, 3)), -1)
    cv2.rectangle(card, (2 * b, int(0.035 * h)), (int(0.6 * w), int(0.085 * h)), (25, 25, 25), -1)
    art = cv2.resize(rng.integers(0, 255, (6, 8, 3)).astype(np.uint8), (w - 4 * b, int(0.38 * h)),
                     interpolation=cv2.INTER_CUBIC)
    card[int(0.11 * h):int(0.11 * h) + art.shape[0], 2 * b:2 * b + art.shape[1]] = art
    for y in range(int(0.56 * h), int(0.8 * h), 12):
        x = 2 * b
        while x < w - 3 * b:
            step = int(rng.integers(8, 24))
            cv2.rectangle(card, (x, y), (min(x + step, w - 3 * b), y + 3), (30, 30, 30), -1)
            x += step + 5
    return card


def background(seed: int) -> np.ndarray:
    """A textured table: smooth colour blotches plus fine grain."""
    rng = np.random.default_rng(seed + 1000)
    blotch = cv2.resize(rng.integers(30, 200, (6, 8, 3)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    return np.clip(blotch + rng.normal(0, 10, (H, W, 3)), 0, 255).astype(np.uint8)


def card_quad(cx, cy, height, rot_deg=0.0, tilt_deg=0.0) -> np.ndarray:
    """Printed TL,TR,BR,BL of a card centred at (cx, cy), turned in-plane, then tilted away (top farther) in 3D."""
    w = height * 5 / 7
    q = np.array([[-w / 2, -height / 2], [w / 2, -height / 2], [w / 2, height / 2], [-w / 2, height / 2]])
    t = np.deg2rad(tilt_deg)
    z = -q[:, 1] * np.sin(t)  # the top edge moves away from the camera
    dist = 2.5 * height  # a pinhole camera 2.5 card heights away
    q = np.stack([q[:, 0], q[:, 1] * np.cos(t)], axis=1) * (dist / (dist + z))[:, None]
    a = np.deg2rad(rot_deg)
    q = q @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    return (q + [cx, cy]).astype(np.float32)


def paste(img: np.ndarray, card: np.ndarray, quad: np.ndarray) -> np.ndarray:
    h, w = card.shape[:2]
    m = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]) - 0.5, quad)
    warped = cv2.warpPerspective(card, m, (img.shape[1], img.shape[0]))
    mask = cv2.warpPerspective(np.full((h, w), 255, np.uint8), m, (img.shape[1], img.shape[0]))
    return np.where(mask[..., None] > 127, warped, img)


def photo(seed: int, quad: np.ndarray, card_seed: int = 0) -> np.ndarray:
    return paste(background(seed), card_image(card_seed), quad)


def best(found, quad) -> float:
    return max((quad_iou(c.corners, quad) for c in found), default=0.0)


@pytest.mark.parametrize("seed,quad", [
    (1, card_quad(320, 240, 300)),
    (2, card_quad(250, 250, 260, rot_deg=12)),
    (3, card_quad(360, 240, 360, rot_deg=-8, tilt_deg=30)),
])
def test_finds_card_and_rectifies_it(seed, quad):
    found = find_card(photo(seed, quad, card_seed=seed))
    assert len(found) == 1
    c = found[0]
    assert quad_iou(c.corners, quad) >= 0.9
    assert corner_error(c.corners, quad) < 0.02
    assert c.crop.shape == (160, 112, 3) and c.crop.dtype == np.uint8
    assert 0.5 <= c.confidence <= 1.0
    # the crop is the card: its border colour along the edges, not the table
    border = np.asarray(card_image(seed)[2, 125], np.float32)
    assert np.abs(c.crop[3, 20:-20].astype(np.float32).mean(0) - border).max() < 40


def test_upside_down_card_corners_and_reported_orientation():
    quad = card_quad(320, 240, 300, rot_deg=180)  # printed TL now at the photo's bottom right
    c = find_card(photo(4, quad, card_seed=3))[0]
    assert quad_iou(c.corners, quad) >= 0.9
    reading = corner_error(c.corners, quad, orientation_agnostic=False) < 0.05
    if c.upright is None:  # geometric order: TL is the photo's top-left corner, i.e. the printed BR
        assert not reading
    else:  # orientation decided: corners and crop are in reading order iff the decision was right
        assert reading == (c.upright is False)


def test_inner_card_is_found_not_its_sleeve():
    quad = card_quad(320, 240, 300, rot_deg=6)
    c = quad.mean(0)
    sleeve = c + (quad - c) * np.array([1.07, 1.05])
    img = background(5).astype(np.float32)
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [np.round(sleeve).astype(np.int32)], 1)
    img[mask > 0] = img[mask > 0] * 0.85 + np.array([235, 238, 242]) * 0.15  # clear plastic lightens a little
    img = img.astype(np.uint8)
    cv2.polylines(img, [np.round(sleeve).astype(np.int32)], True, (250, 250, 250), 1, cv2.LINE_AA)
    found = find_card(paste(img, card_image(5), quad))
    assert found and quad_iou(found[0].corners, quad) >= 0.9
    assert quad_iou(found[0].corners, quad) > quad_iou(found[0].corners, sleeve)


def test_small_card():
    quad = card_quad(450, 150, 0.2 * H, rot_deg=10)
    found = find_card(photo(6, quad, card_seed=6))
    assert found and quad_iou(found[0].corners, quad) >= 0.9


def test_no_card_returns_empty():
    assert find_card(background(7)) == []
    assert find_card(np.full((H, W, 3), 128, np.uint8)) == []


def test_two_cards_with_max_cards():
    q1, q2 = card_quad(170, 240, 280, rot_deg=5), card_quad(470, 250, 280, rot_deg=-7)
    img = paste(photo(8, q1, card_seed=1), card_image(2), q2)
    found = find_card(img, max_cards=2)
    assert len(found) == 2
    assert best(found, q1) >= 0.9 and best(found, q2) >= 0.9
    assert len(find_card(img, max_cards=1)) == 1


def test_exif_rotated_jpeg_path(tmp_path):
    quad = card_quad(320, 240, 300, rot_deg=90)  # the sensor saw the card on its side
    stored = photo(9, quad, card_seed=1)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    shown = np.rot90(stored, k=-1)  # what exif_transpose shows: (W, H)
    # a point (x, y) of the stored image lands at (H - 1 - y, x) after a 90-degree clockwise turn
    shown_quad = np.stack([H - 1 - quad[:, 1], quad[:, 0]], axis=1)
    found = find_card(path)
    assert found and quad_iou(found[0].corners, shown_quad) >= 0.9
    assert found[0].corners[:, 1].max() <= shown.shape[0] and found[0].corners[:, 0].max() <= shown.shape[1]
    assert find_card(Image.open(path))[0].corners == pytest.approx(found[0].corners, abs=0.5)


def test_rectify_landscape_quad_turns_to_portrait():
    quad = card_quad(320, 240, 300, rot_deg=90)
    img = photo(10, quad, card_seed=0)
    crop = rectify(img, order_geometric(quad))
    assert crop.shape == (160, 112, 3)
    ref = cv2.resize(card_image(0), (112, 160), interpolation=cv2.INTER_AREA).astype(np.float32)
    turned = np.abs(crop.astype(np.float32) - ref).mean(), np.abs(crop[::-1, ::-1].astype(np.float32) - ref).mean()
    assert min(turned) < 25  # it is the card, upright or turned by 180 degrees


def test_metrics_and_orientation_helpers():
    q = card_quad(320, 240, 300)
    assert quad_iou(q, q) == pytest.approx(1.0)
    assert quad_iou(q, q + [1000, 0]) == 0.0
    assert corner_error(q, q) == 0.0
    assert corner_error(np.roll(q, 2, axis=0), q) == 0.0
    assert corner_error(np.roll(q, 2, axis=0), q, orientation_agnostic=False) > 0.5
    a, b = both_orientations(card_image(1))
    assert np.array_equal(b[::-1, ::-1], a)
    crop = cv2.resize(card_image(1), (112, 160), interpolation=cv2.INTER_AREA)
    up, conf = guess_upright(crop)
    down, _ = guess_upright(crop[::-1, ::-1])
    assert up is True and down is False and 0.5 <= conf <= 1.0


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_card(tmp_path / "missing.jpg")
    with pytest.raises(ValueError):
        find_card(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError):
        find_card(np.zeros((100, 100, 3), np.float32))
    with pytest.raises(ValueError):
        find_card(np.zeros((100, 100, 3), np.uint8), max_cards=0)


def test_cut_edge_not_printed_inner_frame_with_silver_border():
    # a light silver border against a mid-grey table: the dark printed frame inside is the stronger edge
    quad = card_quad(330, 245, 280, rot_deg=-5, tilt_deg=20)
    card = card_image(4)
    card[:] = np.where(card == card[0, 0], np.uint8(205), card)  # silver border
    b = int(0.045 * card.shape[1])
    cv2.rectangle(card, (b, b), (card.shape[1] - b - 1, card.shape[0] - b - 1), (20, 20, 30), 3)
    table = np.clip(np.full((H, W, 3), 150.0) + np.random.default_rng(4).normal(0, 6, (H, W, 3)), 0, 255)
    found = find_card(paste(table.astype(np.uint8), card, quad))
    assert found and quad_iou(found[0].corners, quad) >= 0.93


@pytest.mark.parametrize("seed", [3, 55, 96])
def test_card_in_a_toploader_is_found_not_a_mix_of_plastic_and_card_sides(seed):
    """Simulated toploader photos where outlines mixing the plastic's sides with the card's scored as high as the
    card: the outline with the card's printed border all round must win."""
    from cardlib.data.camera import simulate_photo
    from cardlib.data.catalogue import synthetic_catalogue

    cat = synthetic_catalogue(n_cards=200, n_sets=4, reprint_fraction=0.1, variant_fraction=0.2, seed=0)
    card = cat.by_id(cat.ids[seed])
    ph = simulate_photo(cat.image(card.card_id), seed=seed, photo_size=(H, W), difficulty=1.0,
                        holo=card.variant != "normal")
    assert ph.factors["sleeve"] == "toploader"
    found = find_card(ph.image)
    assert found and quad_iou(found[0].corners, ph.corners) >= 0.9


def test_alternatives_follow_the_chosen_card():
    quad = card_quad(320, 240, 300, rot_deg=4)
    img = photo(12, quad, card_seed=12)
    plain = find_card(img)
    more = find_card(img, alternatives=3)
    assert len(plain) == 1 and 1 <= len(more) <= 4
    assert more[0].corners == pytest.approx(plain[0].corners, abs=1e-3)
    assert all(quad_iou(a.corners, more[0].corners) < 0.9 for a in more[1:])  # not the same outline again
    with pytest.raises(ValueError, match="alternatives"):
        find_card(img, alternatives=-1)


def test_two_cards_side_by_side_are_a_group_and_so_is_a_page_of_cards():
    from cardlib.find_card_select import _holds_cards

    def quad(x0, y0, x1, y1):
        return order_geometric(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64))

    def holds(cands):
        areas = [float(cv2.contourArea(q.astype(np.float32))) for q, _ in cands]
        return _holds_cards(cands, areas, 0, list(range(1, len(cands))))

    # two portrait cards 250x350 with a 20 px gap: their joint outline is 5:7 on its side
    assert holds([(quad(0, 0, 520, 350), 0.8), (quad(0, 0, 250, 350), 0.95), (quad(270, 0, 520, 350), 0.95)])
    # cards standing the group's way make a group (a binder page around its cards)
    assert holds([(quad(0, 0, 520, 728), 0.8), (quad(0, 0, 250, 350), 0.95), (quad(270, 378, 520, 728), 0.95)])
    # one card with a box printed on it (its artwork) is not a group
    assert not holds([(quad(0, 0, 350, 490), 0.9), (quad(30, 60, 320, 260), 0.85)])


def test_aspect_score_accepts_a_card_the_camera_was_aimed_at_off_the_photo_centre():
    # the camera turned towards a card near the photo's corner: perspective about the card's centre, not the photo's
    card = order_geometric(card_quad(130, 140, 220, rot_deg=15, tilt_deg=38))[None].astype(np.float64)
    assert aspect_score(card, focal=W, centre=np.array([W / 2, H / 2]))[0] > 0.8
    square = order_geometric(card_quad(320, 240, 220) * [1.4, 1.0] - [128, 0])[None].astype(np.float64)
    assert aspect_score(square, focal=W, centre=np.array([W / 2, H / 2]))[0] < 0.1


def test_a_faint_large_rectangle_does_not_hide_a_clear_card_lying_across_it():
    # a mat or a sheet of paper: a weak landscape outline (below reporting strength) around a strong portrait card
    img = photo(11, card_quad(320, 240, 260, rot_deg=4))
    card = order_geometric(card_quad(320, 240, 260, rot_deg=4)).astype(np.float64)
    sheet = order_geometric(np.array([[40, 60], [600, 60], [600, 420], [40, 420]], np.float64))
    cands = [(card, 0.9), (sheet, 0.35)]
    chosen = select_cards(cands, img, 1, outline_bands(img, [q for q, _ in cands]))
    assert len(chosen) == 1 and quad_iou(chosen[0][0], card) > 0.99


@pytest.mark.parametrize("aimed_x,other_x", [(320, 548), (300, 80)])
def test_of_two_clear_cards_the_one_the_camera_was_aimed_at_comes_first(aimed_x, other_x):
    # a card photographed with another lying beside it: the one nearest the photo's centre is the one meant
    aimed, other = card_quad(aimed_x, 240, 220, rot_deg=3), card_quad(other_x, 250, 230, rot_deg=-4)
    img = paste(photo(5, aimed, card_seed=2), card_image(3), other)
    found = find_card(img)
    assert len(found) == 1 and quad_iou(found[0].corners, aimed) > 0.9
    both = find_card(img, max_cards=2)
    assert len(both) == 2 and quad_iou(both[0].corners, aimed) > 0.9 and quad_iou(both[1].corners, other) > 0.9


@pytest.mark.parametrize("cy,rot", [(400, 0.0), (420, 3.0)])
def test_card_cut_across_by_the_photo_edge_is_completed_to_5_7(cy, rot):
    # a quarter of the card lies below the photo: three sides show; the fourth is where a 5:7 card ends
    quad = card_quad(320, cy, 300, rot_deg=rot)
    assert quad[:, 1].max() > H + 60
    found = find_card(photo(3, quad))
    assert found and quad_iou(found[0].corners, quad) > 0.95


def test_the_cut_edge_around_a_printed_panel_is_offered_when_the_border_melts_into_the_table():
    # a silver-bordered card on a table of the same grey: no edge where the card ends, only its printed panel
    from cardlib.find_card_select import cut_edge_of_panel, offer_cut_edge

    quad = card_quad(320, 240, 300, rot_deg=6)
    rng = np.random.default_rng(0)
    table = np.clip(np.full((H, W, 3), (210, 212, 218), np.float32) + rng.normal(0, 2, (H, W, 3)), 0, 255)
    img = paste(table.astype(np.uint8), card_image(2), quad)
    card = order_geometric(quad).astype(np.float64)
    m = 0.045 * 250  # card_image's border, px of its 250 px width
    inner = cv2.perspectiveTransform(np.float32([[m, m], [250 - m, m], [250 - m, 350 - m], [m, 350 - m]])[None],
                                     cv2.getPerspectiveTransform(np.float32([[0, 0], [250, 0], [250, 350], [0, 350]]),
                                                                 quad))[0]
    panel = order_geometric(inner).astype(np.float64)
    assert quad_iou(cut_edge_of_panel(panel), card) > 0.97
    cands = [(panel, 0.9), (card, 0.5)]
    border = outline_bands(img, [q for q, _ in cands]).border
    assert not border[0]  # the panel has no plain border inside it
    offered = offer_cut_edge(cands[:1], cands, border, img)
    assert len(offered) == 2 and offered[0] is cands[0] and quad_iou(offered[1][0], card) > 0.97
    # the whole way through: the card's outline is among what find_card offers a gallery check
    assert best(find_card(img, alternatives=3), quad) > 0.95
    # a card whose printed border shows inside its outline is a card, not a panel: nothing offered
    img = photo(4, quad, card_seed=2)
    cands = [(card, 0.9)]
    border = outline_bands(img, [card]).border
    assert border[0] and offer_cut_edge(cands[:1], cands, border, img) == cands[:1]


@pytest.mark.parametrize("quad", [[[100, 60], [260, 80], [250, 300], [90, 290]],  # portrait, in perspective
                                  [[40, 100], [330, 110], [320, 300], [50, 290]],  # on its side
                                  [[-20, -10], [200, 5], [190, 250], [-30, 240]]])  # partly off the photo
def test_side_bands_are_the_pixels_of_the_whole_warped_view(quad):
    from cardlib.find_card_band import CARD_PX, MARGIN, OUT, _strips, _to_view, sample_bands

    img = np.random.default_rng(3).integers(0, 256, (320, 360, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)  # smooth: bilinear reads agree within rounding
    quad = np.float64(quad)
    w, h, m = CARD_PX[0], CARD_PX[1], MARGIN
    view = cv2.warpPerspective(img, _to_view(quad), (w + 2 * m, h + 2 * m), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    cx, cy = slice(m + w // 6, m + w - w // 6), slice(m + h // 8, m + h - h // 8)
    bands = sample_bands(img, quad[None])
    for lo, hi in ((-4, -1), (-3, -1), OUT):
        a, b = (-hi, -lo) if lo < 0 else (lo, hi)
        if lo < 0:  # inside: rows m+a .. m+b-1 from the top, mirrored from the bottom
            top, bottom = view[m + a:m + b, cx], view[m + h - b:m + h - a, cx]
            left, right = view[cy, m + a:m + b], view[cy, m + w - b:m + w - a]
        else:  # outside: rows m-b .. m-a-1 above the top, mirrored below the bottom
            top, bottom = view[m - b:m - a, cx], view[m + h + a:m + h + b, cx]
            left, right = view[cy, m - b:m - a], view[cy, m + w + a:m + w + b]
        tb, lr = _strips(bands, lo, hi)
        for got, want in ((tb[0, 0], top), (tb[0, 1], bottom), (lr[0, 0], left), (lr[0, 1], right)):
            assert got.shape == want.reshape(-1, 3).shape
            assert np.abs(np.sort(got, axis=0) - np.sort(want.reshape(-1, 3), axis=0)).max() <= 1.0


def test_an_outline_shaped_like_two_cards_is_cut_into_its_halves():
    from cardlib.find_card import _halves

    def pair(a, b):
        return order_geometric(np.array([a[0], b[1], b[2], a[3]])).astype(np.float64)[None]

    left = card_quad(250, 240, 200, rot_deg=8)
    u = (left[1] - left[0]) / np.linalg.norm(left[1] - left[0])
    right = left + u * (200 * 5 / 7 + 2)  # two cards 2 px apart, side by side
    halves = _halves(pair(left, right))
    assert len(halves) == 2
    assert sorted(max(quad_iou(h, q) for h in halves) for q in (left, right))[0] > 0.97
    top = card_quad(320, 130, 150, rot_deg=-4)
    v = (top[3] - top[0]) / np.linalg.norm(top[3] - top[0])
    below = top + v * 152  # one above the other
    joint = order_geometric(np.array([top[0], top[1], below[2], below[3]])).astype(np.float64)[None]
    assert sorted(max(quad_iou(h, q) for h in _halves(joint)) for q in (top, below))[0] > 0.97
    # a card standing upright (or a little turned) is one card, not two
    for rot in (0, 12, 180):
        assert len(_halves(order_geometric(card_quad(320, 240, 300, rot_deg=rot))[None].astype(np.float64))) == 0


@pytest.mark.parametrize("gap,rot,seed", [(0.5, 0, 3), (1.5, 5, 7)])
def test_of_two_cards_a_pixel_apart_the_gallery_check_gets_the_one_aimed_at(gap, rot, seed, monkeypatch):
    # small, slightly blurred cards whose edges touch: only their joint outline (10:7) stands out; its halves are
    # offered, and the gallery check takes the card the camera was aimed at
    import cardlib.find_card as fc
    from cardlib.hashing import card_hashes, gallery_check

    aimed = card_quad(320, 240, 120, rot_deg=rot)
    u = (aimed[1] - aimed[0]) / np.linalg.norm(aimed[1] - aimed[0])
    other = aimed + u * (120 * 5 / 7 + gap)
    img = cv2.GaussianBlur(paste(paste(background(seed), card_image(1), aimed), card_image(3), other), (0, 0), 1.0)
    gallery = card_hashes([cv2.resize(card_image(s), (112, 160), interpolation=cv2.INTER_AREA) for s in range(1, 9)])

    def checked():
        found = find_card(img, alternatives=3)
        return quad_iou(found[gallery_check(found, gallery)[0]].corners, aimed)

    assert checked() >= 0.9
    monkeypatch.setattr(fc, "PAIR_TRIES", 0)  # without the halves the card's own outline is not among the candidates
    assert checked() < 0.6

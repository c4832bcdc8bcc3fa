"""Card data layer: catalogue/importers, renderer, camera simulator, splits, datasets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cardlib.data import (Card, Catalogue, CropDataset, GroupedBatchSampler, PairDataset, ReferenceDataset,
                          SimulatedCropDataset, default_labels, make_loader, make_splits, photo_plan, render_card,
                          scans_catalogue, scans_catalogue_from_store, simulate_crop, simulate_photo,
                          synthetic_catalogue, validate_card_id)
from cardlib.preprocess import Preprocess

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTO_KEYS = {"angle_deg", "rotation_deg", "upside_down", "scale", "glare", "holo_sheen", "sleeve", "blur", "noise",
              "jpeg_quality", "occlusion", "background", "neighbours", "colour_temperature_k", "cropped"}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


@pytest.fixture(scope="module")
def cat():
    return synthetic_catalogue(40, 3, reprint_fraction=0.2, variant_fraction=0.2, seed=3)


def two_tone_card(h=350, w=250):
    """Top half red, bottom half blue: orientation is readable from any photo of it."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (220, 30, 30)
    img[h // 2:] = (30, 30, 220)
    return img


# ---------------------------------------------------------------- ids and catalogue

@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", "", ".hidden", "a..b", "x" * 129, "a b"])
def test_bad_ids_are_refused_naming_the_id(bad):
    with pytest.raises(ValueError, match="bad card id"):
        validate_card_id(bad)


def test_good_ids_pass():
    for good in ("sv1-1", "swsh12pt5gg-GG01", "syn2-14-rh", "A.b_c-9"):
        assert validate_card_id(good) == good


def test_duplicate_and_empty_catalogue_errors():
    c = Card("s-1", "A", "s", "S", "1", 10, "Common")
    with pytest.raises(ValueError, match="duplicate card id 's-1'"):
        Catalogue([c, c])
    with pytest.raises(ValueError, match="empty catalogue"):
        Catalogue([])
    with pytest.raises(ValueError, match="variant"):
        Card("s-2", "A", "s", "S", "2", 10, "Common", variant="shiny")


def test_synthetic_catalogue_has_reprints_and_variants(cat):
    assert len(cat) == 40 and len(set(cat.ids)) == 40
    groups = [ids for ids in cat.groups().values() if len(ids) > 1]
    assert groups, "reprints/variants must share an artwork_id"
    kinds = set()
    for ids in groups:
        cards = [cat.by_id(i) for i in ids]
        assert len({c.name for c in cards}) == 1
        kinds |= {"reprint" if len({c.set_id for c in cards}) > 1 else "variant"}
        kinds |= {"variant" for c in cards if c.card_id.endswith(("-rh", "-h", "-n"))}
    assert kinds == {"reprint", "variant"}
    assert {c.variant for c in cat} >= {"normal", "reverse_holo"}
    for c in cat:
        assert 1 <= int(c.number) <= c.set_total


def test_records_round_trip_through_json(cat):
    again = Catalogue.from_records(json.loads(json.dumps(cat.to_records())))
    assert again.ids == cat.ids and again.cards == cat.cards
    assert np.array_equal(again.image(cat.ids[5]), cat.image(cat.ids[5]))


# ---------------------------------------------------------------- renderer

def test_render_is_deterministic_and_seeded(cat):
    card = cat.by_id(cat.ids[0])
    a, b = render_card(card, (350, 250), seed=1), render_card(card, (350, 250), seed=1)
    assert a.shape == (350, 250, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - render_card(card, (350, 250), seed=2)).mean() > 5


def test_reprints_share_artwork_but_differ(cat):
    ids = next(v for v in cat.groups().values() if len({cat.by_id(i).set_id for i in v}) > 1)
    a, b = cat.image(ids[0]), cat.image(ids[1])
    art = (slice(60, 170), slice(40, 210))  # well inside the artwork window
    assert np.abs(a[art].astype(int) - b[art]).mean() < 8  # same artwork (foil may tint one)
    assert not np.array_equal(a, b)  # set symbol, number, frame differ
    other = next(c for c in cat.ids if cat.by_id(c).artwork_id != cat.by_id(ids[0]).artwork_id)
    assert np.abs(a[art].astype(int) - cat.image(other)[art]).mean() > 15


def test_foil_variants_put_foil_where_they_should():
    base = Card("f-1", "Foily", "f", "F", "1", 9, "Rare", artwork_id="art-f")
    plain = render_card(base)
    holo = render_card(Card("f-1-h", "Foily", "f", "F", "1", 9, "Rare", variant="holo", artwork_id="art-f"))
    rev = render_card(Card("f-1-rh", "Foily", "f", "F", "1", 9, "Rare", variant="reverse_holo", artwork_id="art-f"))
    art, body = (slice(80, 150), slice(60, 190)), (slice(250, 300), slice(30, 220))
    diff = lambda x, s: np.abs(x[s].astype(int) - plain[s]).mean()  # noqa: E731
    assert diff(holo, art) > 10 and diff(holo, body) < 1
    assert diff(rev, body) > 10 and diff(rev, art) < 1


# ---------------------------------------------------------------- camera simulator

def test_photo_is_deterministic_and_factors_serialise(cat):
    img = cat.image(cat.ids[1])
    p1, p2 = simulate_photo(img, 7, neighbours=[cat.image(cat.ids[2])]), simulate_photo(img, 7, neighbours=[cat.image(cat.ids[2])])
    assert np.array_equal(p1.image, p2.image) and np.array_equal(p1.corners, p2.corners)
    assert p1.image.shape == (480, 640, 3) and p1.image.dtype == np.uint8
    assert p1.corners.shape == (4, 2) and p1.corners.dtype == np.float32
    assert not np.array_equal(p1.image, simulate_photo(img, 8).image)
    assert PHOTO_KEYS <= set(p1.factors)
    assert json.loads(json.dumps(p1.factors)) == p1.factors
    assert p1.factors["neighbours"] >= 1


def test_difficulty_zero_is_a_clean_centred_photo():
    card = two_tone_card()
    p = simulate_photo(card, 0, difficulty=0.0)
    f = p.factors
    assert f["angle_deg"] == 0 and f["rotation_deg"] == 0 and not f["upside_down"] and not f["glare"]
    assert f["sleeve"] == "none" and f["blur"] == "none" and not f["occlusion"] and f["jpeg_quality"] == 95
    back = cv2.warpPerspective(p.image, cv2.getPerspectiveTransform(p.corners, np.float32([[0, 0], [250, 0], [250, 350], [0, 350]])), (250, 350))
    inner = (slice(20, 330), slice(20, 230))
    assert np.abs(back[inner].astype(int) - card[inner]).mean() < 6


def test_corners_locate_the_card_and_its_orientation():
    card = two_tone_card()
    seen_upside = seen_upright = 0
    for seed in range(30):
        p = simulate_photo(card, seed, difficulty=1.0)
        f = p.factors
        # rectify with the reported corners: the printed top half must come back red, the bottom blue
        back = cv2.warpPerspective(p.image, cv2.getPerspectiveTransform(p.corners, np.float32([[0, 0], [250, 0], [250, 350], [0, 350]])),
                                   (250, 350), borderMode=cv2.BORDER_REPLICATE).astype(int)
        top, bottom = back[20:150, 20:230].mean((0, 1)), back[200:330, 20:230].mean((0, 1))
        assert top[0] > top[2] + 40 and bottom[2] > bottom[0] + 40, (seed, f)
        # the centre of the quad lies inside the photo unless the frame crops most of the card
        c = p.corners.mean(0)
        assert 0 <= c[0] < 640 and 0 <= c[1] < 480
        down = p.corners[3] - p.corners[0]  # printed left edge, top → bottom
        if abs(abs(f["rotation_deg"]) - 90) > 20:
            assert (down[1] < 0) == f["upside_down"], (seed, f)
        seen_upside += f["upside_down"]
        seen_upright += not f["upside_down"]
        assert 0.15 <= f["scale"] <= 0.98
    assert seen_upside >= 2 and seen_upright >= 15


def test_with_other_cards_in_view_the_photo_is_aimed_at_its_card(cat):
    img, other = cat.image(cat.ids[1]), cat.image(cat.ids[2])

    def off_centre(p):  # the card's centre from the photo's, as a share of the card's extent on each axis
        lo, hi = p.corners.min(0), p.corners.max(0)
        return float((np.abs((lo + hi) / 2 - [320, 240]) / (hi - lo)).max())

    beside = [off_centre(simulate_photo(img, seed, neighbours=[other])) for seed in range(25)]
    alone = [off_centre(simulate_photo(img, seed)) for seed in range(25)]
    assert max(beside) <= 0.2 + 1e-3  # the neighbours (a card's width and a gap away) lie farther out
    assert max(alone) > 0.3  # alone, a card may lie anywhere in the frame


def test_simulated_crop(cat):
    img = cat.image(cat.ids[0])
    c1, f1 = simulate_crop(img, 5)
    c2, _ = simulate_crop(img, 5)
    assert c1.shape == (160, 112, 3) and c1.dtype == np.uint8 and np.array_equal(c1, c2)
    assert json.loads(json.dumps(f1)) == f1 and {"corner_error", "flipped", "glare", "sleeve", "blur"} <= set(f1)
    clean, f0 = simulate_crop(img, 5, difficulty=0.0)
    ref = cv2.resize(img, (112, 160), interpolation=cv2.INTER_AREA)
    assert f0["corner_error"] == 0 and not f0["flipped"]
    assert np.abs(clean[8:-8, 8:-8].astype(int) - ref[8:-8, 8:-8]).mean() < 8
    flips = [simulate_crop(two_tone_card(), s)[0:2] for s in range(20)]
    for crop, f in flips:
        top, bottom = crop[10:70].reshape(-1, 3).mean(0), crop[90:150].reshape(-1, 3).mean(0)
        assert (top[2] > top[0]) == f["flipped"] and (bottom[0] > bottom[2]) == f["flipped"], f
    assert any(f["flipped"] for _, f in flips) and not all(f["flipped"] for _, f in flips)


# ---------------------------------------------------------------- importers

def _write_scan(path: Path, colour, size=(245, 342), alpha=True):
    img = Image.new("RGBA" if alpha else "RGB", size, colour)
    if alpha:
        img.putpixel((0, 0), (0, 0, 0, 0))  # a transparent rounded corner
    img.save(path)


def _metadata(root: Path) -> Path:
    (root / "cards" / "en").mkdir(parents=True)
    (root / "sets").mkdir()
    (root / "sets" / "en.json").write_text(json.dumps([{"id": "tst", "name": "Test Set", "printedTotal": 99, "total": 120}]))
    cards = [{"id": "tst-1", "name": "Pineco", "number": "1", "rarity": "Common", "supertype": "Pokémon", "hp": "60",
              "types": ["Grass"], "artist": "A. Artist"},
             {"id": "tst-2", "name": "Pineco", "number": "2", "rarity": "Illustration Rare", "supertype": "Pokémon",
              "hp": "60", "types": ["Grass"], "artist": "A. Artist"}]
    (root / "cards" / "en" / "tst.json").write_text(json.dumps(cards))
    return root


def test_scans_importer_with_metadata(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    _write_scan(scans / "tst-1.png", (200, 10, 10, 255))
    _write_scan(scans / "tst-2.jpg", (10, 10, 200), alpha=False)
    _write_scan(scans / "other-7.webp", (10, 200, 10), alpha=False)
    (scans / "notes.txt").write_text("not a scan")
    cat = scans_catalogue(scans, _metadata(tmp_path / "meta"))
    assert cat.ids == ["other-7", "tst-1", "tst-2"]
    c1, c2, other = cat.by_id("tst-1"), cat.by_id("tst-2"), cat.by_id("other-7")
    assert (c1.name, c1.set_name, c1.set_total, c1.hp, c1.types, c1.variant) == ("Pineco", "Test Set", 99, 60, ("Grass",), "normal")
    assert c2.variant == "holo" and c1.artwork_id == c2.artwork_id
    assert (other.name, other.set_id, other.number, other.set_total) == ("other-7", "other", "7", 0)
    img = cat.image("tst-1")
    assert img.shape == (350, 250, 3) and tuple(img[0, 0]) == (255, 255, 255) and img[175, 125, 0] > 190
    assert cat.check_images() == []


def test_scans_importer_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty catalogue"):
        scans_catalogue(tmp_path / "empty")
    dup = tmp_path / "dup"
    dup.mkdir()
    _write_scan(dup / "x-1.png", (1, 2, 3, 255))
    _write_scan(dup / "x-1.jpg", (1, 2, 3), alpha=False)
    with pytest.raises(ValueError, match="duplicate card id 'x-1'"):
        scans_catalogue(dup)
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_scan(bad / "a..b.png", (1, 2, 3, 255))
    with pytest.raises(ValueError, match="a..b"):
        scans_catalogue(bad)


def test_corrupt_scan_is_reported_and_dropped(tmp_path):
    for i in range(3):
        _write_scan(tmp_path / f"c-{i}.png", (50 * i, 80, 90, 255))
    data = (tmp_path / "c-1.png").read_bytes()
    (tmp_path / "c-1.png").write_bytes(data[: len(data) // 2])  # truncated mid-stream
    cat = scans_catalogue(tmp_path)
    bad = cat.check_images()
    assert [b[0] for b in bad] == ["c-1"] and bad[0][1]
    kept = cat.drop([b[0] for b in bad])
    assert kept.ids == ["c-0", "c-2"] and len(cat) == 3
    with pytest.raises(ValueError, match="empty catalogue"):
        kept.drop(kept.ids)


class FolderStore:
    """The two Store methods the importer relies on, over a real local folder."""

    def __init__(self, root: Path):
        self.root, self.gets = root, []

    def list(self, prefix: str) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in (self.root / prefix).rglob("*") if p.is_file())

    def get(self, key: str, local_path: str) -> None:
        self.gets.append(key)
        shutil.copyfile(self.root / key, local_path)


def test_scans_from_store_downloads_once(tmp_path):
    store = FolderStore(tmp_path / "store")
    (tmp_path / "store" / "data" / "scans").mkdir(parents=True)
    for i in range(2):
        _write_scan(tmp_path / "store" / "data" / "scans" / f"tst-{i + 1}.png", (90, 90, 90, 255))
    cat = scans_catalogue_from_store(store, "data/scans", tmp_path / "cache", _metadata(tmp_path / "meta"))
    assert cat.ids == ["tst-1", "tst-2"] and cat.by_id("tst-1").name == "Pineco"
    assert sorted(store.gets) == ["data/scans/tst-1.png", "data/scans/tst-2.png"]
    scans_catalogue_from_store(store, "data/scans", tmp_path / "cache")
    assert len(store.gets) == 2  # cached: nothing downloaded again


# ---------------------------------------------------------------- splits

def test_splits_keep_artwork_groups_together(cat):
    s = make_splits(cat, 0.25, seed=0)
    assert set(s.train_cards).isdisjoint(s.novel_cards)
    assert sorted(s.train_cards + s.novel_cards) == sorted(cat.ids) == sorted(s.gallery)
    for ids in cat.groups().values():
        assert len({i in s.novel_cards for i in ids}) == 1
    assert abs(len(s.novel_cards) - 10) <= 3
    assert make_splits(cat, 0.25, seed=0) == s and make_splits(cat, 0.25, seed=1).novel_cards != s.novel_cards
    one_group = Catalogue([Card(f"g-{i}", "G", "g", "G", str(i), 3, "Common", artwork_id="same") for i in range(3)])
    with pytest.raises(ValueError, match="both need at least one"):
        make_splits(one_group, 0.5, seed=0)


def test_photo_plan(cat):
    s = make_splits(cat, 0.25, seed=0)
    rows = photo_plan(s, 3, 1, 2, seed=0)
    assert len(rows) == len(s.train_cards) * 6 + len(s.novel_cards) * 3
    assert len({r["photo_id"] for r in rows}) == len(rows)
    novel = set(s.novel_cards)
    assert all(r["novel"] == (r["card_id"] in novel) for r in rows)
    assert not any(r["split"] == "train" and r["novel"] for r in rows)
    assert {r["split"] for r in rows if r["novel"]} == {"val", "test"}
    assert rows == photo_plan(s, 3, 1, 2, seed=0) and rows != photo_plan(s, 3, 1, 2, seed=1)


# ---------------------------------------------------------------- datasets

def test_datasets_and_loader(cat, tmp_path):
    pre = Preprocess()
    labels = default_labels(cat)
    rows = []
    for k, cid in enumerate(cat.ids[:6]):
        crop, _ = simulate_crop(cat.image(cid), k)
        Image.fromarray(crop).save(tmp_path / f"{cid}.png")
        rows.append({"card_id": cid, "path" if k % 2 else "crop": f"{cid}.png"})  # both row styles
    crops = CropDataset(rows, tmp_path, pre, labels)
    x, y = crops[2]
    assert x.shape == (3, 160, 112) and x.dtype == torch.float32 and y == labels[cat.ids[2]]
    crop, ref, y = PairDataset(crops, cat)[1]
    assert crop.shape == ref.shape == (3, 160, 112) and y == 1
    assert torch.equal(ref, pre(cat.image(cat.ids[1])))  # the reference tensor, made once per card
    (tmp_path / f"{cat.ids[2]}.png").unlink()  # a crop is decoded once: later epochs read it from memory
    assert torch.equal(crops[2][0], x)
    refs = ReferenceDataset(cat, pre, ids=cat.ids[3:5])
    assert len(refs) == 2 and refs[1][1] == labels[cat.ids[4]]
    with pytest.raises(ValueError, match="escapes"):
        CropDataset([{"card_id": cat.ids[0], "path": "../x.png"}], tmp_path, pre, labels)
    order = lambda: torch.cat([b[1] for b in make_loader(crops, 4, True, seed=11)]).tolist()  # noqa: E731
    assert order() == order() and sorted(order()) == sorted(crops.labels)
    sim = SimulatedCropDataset(cat, cat.ids[:2], pre, labels, n_per_card=2, difficulty=1.0, seed=0)
    a = sim[1][0]
    assert torch.equal(a, sim[1][0])
    sim.set_epoch(1)
    assert not torch.equal(a, sim[1][0])


def test_grouped_batch_sampler_batches_hard_negatives_together(cat):
    labels, groups = [], []
    for lab, cid in enumerate(cat.ids):
        for _ in range(2):  # two photos per card
            labels.append(lab)
            groups.append(cat.by_id(cid).artwork_id)
    sampler = GroupedBatchSampler(groups, labels, batch_size=8, seed=0)
    batches = list(sampler)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(labels)))
    for b in batches:
        assert len(b) <= 8 and len({labels[i] for i in b}) == len(b)  # a card never meets itself
    multi = {g for g in groups if len({labels[i] for i in range(len(labels)) if groups[i] == g}) > 1}
    together = 0
    for b in batches:
        for g in {groups[i] for i in b} & multi:
            together += sum(groups[i] == g for i in b) > 1
    assert together >= len(multi)  # each group's cards meet in a batch at least once per epoch
    assert list(sampler) == batches and len(sampler) == len(batches)
    sampler.set_epoch(1)
    assert list(sampler) != batches


# ---------------------------------------------------------------- real scans (skipped when the data is absent)

def test_real_scans_sv1():
    scans, meta = SHARED / "scans" / "sv1", SHARED / "pokemon-tcg-data"
    if not scans.is_dir() or not meta.is_dir():
        pytest.skip("shared real-card data not present")
    cat = scans_catalogue(scans, meta)
    assert len(cat) == 258
    c = cat.by_id("sv1-1")
    assert (c.name, c.set_name, c.number, c.set_total, c.types) == ("Pineco", "Scarlet & Violet", "1", 198, ("Grass",))
    img = cat.image("sv1-1")
    assert img.shape == (350, 250, 3) and tuple(img[0, 0]) == (255, 255, 255)  # transparent corner on white
    p = simulate_photo(img, 0)
    assert p.image.shape == (480, 640, 3)
    s = make_splits(cat, 0.2, seed=0)
    for ids in cat.groups().values():
        assert len({i in s.novel_cards for i in ids}) == 1

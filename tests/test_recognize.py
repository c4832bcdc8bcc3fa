"""Gallery, hashing and the fused matcher on small rendered cards the tests make themselves."""
import hashlib
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cardlib.data.catalogue import synthetic_catalogue
from cardlib.find_card import CardCandidate
from cardlib.gallery import Gallery, OnnxEmbedder, TorchEmbedder, build_gallery
from cardlib.hashing import GALLERY_MATCH_MIN, card_hashes, gallery_check, hash_similarity
from cardlib.preprocess import Preprocess
from cardlib.recognize import FusedMatcher, FusionWeights, choose_mix, fit_fusion, fit_unknown_threshold, recognize_photos

PRE = Preprocess()


@pytest.fixture(scope="module")
def cards():
    torch.set_num_threads(1)
    cat = synthetic_catalogue(24, 2, reprint_fraction=0.0, variant_fraction=0.0, seed=3)
    return {c: cat.image(c) for c in cat.ids}


def noisy(img, seed, sigma=10.0):
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


class LookupEmbedder:
    """Hand-set embeddings keyed by image bytes: lets a test decide exactly where the embedding is right or wrong."""

    preprocess, model_id, dim = PRE, "lookup-v1", 64

    def __init__(self):
        self.table = {}

    def key(self, img):
        return hashlib.sha1(PRE.resize_uint8(img).tobytes()).hexdigest()

    def set(self, img, vec):
        self.table[self.key(img)] = np.asarray(vec, np.float32) / np.linalg.norm(vec)

    def __call__(self, crops):
        # an unregistered image (e.g. the 180° reading) is orthogonal to every card: cosine 0, never a false match
        other = np.eye(self.dim, dtype=np.float32)[-1]
        return np.stack([self.table.get(self.key(c), other) for c in crops])


def lookup_gallery(refs, seed=0):
    emb = LookupEmbedder()
    rng = np.random.default_rng(seed)
    vecs = {}
    for c, img in refs.items():
        vecs[c] = np.r_[rng.normal(size=emb.dim - 8), np.zeros(8)]
        emb.set(img, vecs[c])
    return emb, vecs, build_gallery(refs, emb, {c: {"name": f"Card {c}"} for c in refs})


def test_hash_similarity_identical_is_one_and_orientation_search_finds_upside_down(cards):
    ids = list(cards)
    bits = card_hashes([cards[c] for c in ids])
    assert bits.shape == (len(ids), 16) and bits.dtype == np.uint8
    sim = hash_similarity(bits, bits)
    assert np.allclose(np.diag(sim), 1.0) and sim[~np.eye(len(ids), dtype=bool)].max() < 1.0
    flipped = np.unpackbits(bits[:1], axis=1)
    flipped[0, :5] ^= 1  # five bits differ → 1 − 5/128
    assert hash_similarity(np.packbits(flipped, axis=1), bits[:1])[0, 0] == pytest.approx(1 - 5 / 128)

    gallery = build_gallery(cards, None)
    matcher = FusedMatcher(gallery, method="hash")  # the pHash+dHash baseline, on crops
    upside_down = [noisy(cards[c], i)[::-1, ::-1] for i, c in enumerate(ids[:6])]
    results = matcher.match(upside_down, top_k=3)
    assert [r[0].card_id for r in results] == ids[:6]
    assert all(r[0].orientation == 180 and len(r) == 3 for r in results)
    s = matcher.signals(upside_down[:1])
    assert s.hash2[0, 1, 0] > s.hash2[0, 0, 0] + 0.1  # it was the 180° reading that matched
    with pytest.raises(ValueError, match="embedder"):
        FusedMatcher(gallery, method="fused")


def test_fusion_beats_each_wrong_signal(cards):
    refs = dict(cards)
    ids = list(refs)
    a, b, c = ids[0], ids[1], ids[2]
    d = "syn9-99"  # a hand-made reprint of c: same artwork, another collector number
    refs[d] = refs[c].copy()
    refs[d][-40:, :90] = 255 - refs[d][-40:, :90]
    emb, vec, gallery = lookup_gallery(refs)
    # query of a under glare: the hash still sees a, the embedding is fooled into b (b 0.78 vs a 0.62)
    qa = noisy(refs[a], 1)
    qa[40:120, 60:200] = 255
    emb.set(qa, 0.75 * vec[b] / np.linalg.norm(vec[b]) + 0.6 * vec[a] / np.linalg.norm(vec[a]))
    # query of the reprint c photographed so its number looks like d's: hash says d, the embedding says c
    qc = refs[d].copy()
    emb.set(qc, vec[c] / np.linalg.norm(vec[c]) + 0.3 * vec[d] / np.linalg.norm(vec[d]))
    queries, truth = [qa, qc], [a, c]

    def ranks(method):
        sc = FusedMatcher(gallery, emb, FusionWeights(1.0, 1.0, 0.0, shortlist_k=5), method).scores(queries)
        return [int((sc[q] > sc[q, gallery.index_of(t)]).sum()) + 1 for q, t in enumerate(truth)]

    h, e, f = ranks("hash"), ranks("embedding"), ranks("fused")
    assert h[1] > 1 and e[0] > 1 and h[0] == 1 and e[1] == 1  # each single signal is wrong on one query
    assert all(fq <= min(hq, eq) for fq, hq, eq in zip(f, h, e)) and f == [1, 1]
    top = FusedMatcher(gallery, emb, FusionWeights(1.0, 1.0, 0.0, 5)).match(queries, top_k=2)
    assert [m[0].card_id for m in top] == truth and top[0][0].name == f"Card {a}"
    assert top[0][0].hash_score > top[0][1].hash_score and top[1][0].embedding_score > 0.9


def test_fit_fusion_learns_positive_weights(cards):
    emb, vec, gallery = lookup_gallery(cards, seed=1)
    rng = np.random.default_rng(5)
    ids = list(cards)
    crops = []
    for i, c in enumerate(ids):
        q = noisy(cards[c], 100 + i, sigma=25)
        y, x = rng.integers(0, 250), rng.integers(0, 150)
        q[y : y + 110, x : x + 110] = 255  # a blown-out glare patch somewhere: hashing suffers
        emb.set(q, vec[c] / np.linalg.norm(vec[c]) + 2.0 * rng.normal(size=emb.dim) / np.sqrt(emb.dim))
        crops.append(q)
    matcher = FusedMatcher(gallery, emb)
    w = fit_fusion(matcher, crops, ids, shortlist_k=5)
    assert w.hash > 0 and w.embedding > 0 and w.shortlist_k == 5
    assert FusionWeights.from_dict(json.loads(json.dumps(w.to_dict()))) == w
    matcher.weights = w
    top1 = {m: sum(r[0].card_id == t for r, t in zip(FusedMatcher(gallery, emb, w, m).match(crops, 1), ids))
            for m in ("hash", "embedding", "fused")}
    assert max(top1["hash"], top1["embedding"]) < len(ids)  # each signal alone makes mistakes here
    assert top1["fused"] > max(top1["hash"], top1["embedding"])  # ≥ is guaranteed on the data the mix was chosen on
    with pytest.raises(ValueError):
        fit_fusion(matcher, crops[:2], ids[:1])
    with pytest.raises(ValueError, match="embedding signals"):
        fit_fusion(FusedMatcher(gallery, method="hash"), crops, ids)


def test_unknown_threshold_by_hand_and_rejects_absent_card(cards):
    # known [0.9, 0.95, 0.8], unknown [0.5, 0.6, 0.85]: at precision 1 cut between 0.6 and 0.8; at 0.75 above 0.85
    assert fit_unknown_threshold([0.9, 0.95, 0.8], [0.5, 0.6, 0.85], 1.0) == pytest.approx(0.7)
    assert fit_unknown_threshold([0.9, 0.95, 0.8], [0.5, 0.6, 0.85], 0.75) == pytest.approx(0.875)
    with pytest.warns(RuntimeWarning):
        assert fit_unknown_threshold([0.1], [0.9], 0.9) == -np.inf

    ids = list(cards)
    absent = ids[-4:]  # never put in the gallery
    gallery = build_gallery({c: cards[c] for c in ids[:-4]}, None)
    matcher = FusedMatcher(gallery, method="hash")
    top = lambda crops: [r[0].score for r in matcher.match(crops, top_k=1)]  # noqa: E731
    t = fit_unknown_threshold(top([noisy(cards[c], 7) for c in ids[:8]]), top([noisy(cards[c], 7) for c in absent[:3]]), 0.95)
    matcher.unknown_threshold = t
    res = matcher.match([noisy(cards[absent[3]], 11), noisy(cards[ids[9]], 11)], top_k=2)
    assert res[0][0].unknown and all(m.unknown for m in res[0])
    assert not res[1][0].unknown and res[1][0].card_id == ids[9]


def test_gallery_save_load_append_and_refusals(cards, tmp_path):
    ids = list(cards)
    emb, _, g = lookup_gallery({c: cards[c] for c in ids[:10]})
    g.save(tmp_path / "g")
    back = Gallery.load(tmp_path / "g")
    assert back.card_ids == g.card_ids and back.names == g.names and back.metadata == g.metadata
    assert back.model_id == "lookup-v1" and back.preprocess == g.preprocess
    assert np.array_equal(back.hashes, g.hashes) and np.abs(back.embeddings - g.embeddings).max() < 2e-3
    assert back.search(g.embeddings[3], k=1)[0][0] == 3

    extra = {c: cards[c] for c in ids[10:14]}
    for c, img in extra.items():
        emb.set(img, np.random.default_rng(len(c)).normal(size=emb.dim))
    back.append(build_gallery(extra, emb, {c: {"name": c, "set": "syn2"} for c in extra}))
    assert len(back) == 14 and back.card_ids[-4:] == list(extra) and back.metadata[-1]["set"] == "syn2"
    back.save(tmp_path / "g")
    assert Gallery.load(tmp_path / "g").card_ids == back.card_ids
    with pytest.raises(ValueError, match="already in the gallery"):
        back.append(build_gallery({ids[0]: cards[ids[0]]}, emb))
    with pytest.raises(ValueError, match="built with"):
        back.append(build_gallery({"new-1": cards[ids[20]]}, emb, model_id="another-model"))
    for bad in ("../etc", "a/b", "", "x..y"):
        with pytest.raises(ValueError):
            build_gallery({bad: cards[ids[0]]}, None)
    raw = (tmp_path / "g" / "gallery.npz").read_bytes()
    (tmp_path / "g" / "gallery.npz").write_bytes(raw[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="does not match"):
        Gallery.load(tmp_path / "g")


def test_search_finds_the_right_card_among_20000():
    rng = np.random.default_rng(0)
    n, dim = 20_000, 128
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    g = Gallery([f"c{i}" for i in range(n)], [f"card {i}" for i in range(n)], [{}] * n, emb,
                rng.integers(0, 256, (n, 16), dtype=np.uint8), "random", PRE.to_dict())
    want = rng.choice(n, 50, replace=False)
    idx, scores = g.search(emb[want] + 0.3 * rng.normal(size=(50, dim)).astype(np.float32), k=5)
    assert idx.shape == (50, 5) and np.array_equal(idx[:, 0], want)
    assert np.all(np.diff(scores, axis=1) <= 0)
    hs = hash_similarity(g.hashes[want[:3]], g.hashes, g.hash_signs)
    assert np.array_equal(hs.argmax(axis=1), want[:3])


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=4)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2)
        self.fc = torch.nn.Linear(32, 32)
        self.normalize = True  # the switch cardlib.export uses to end the graph before or after L2 normalisation

    def forward(self, x):
        y = self.fc(torch.relu(self.conv2(torch.relu(self.conv(x)))).mean(dim=(2, 3)))
        return torch.nn.functional.normalize(y, dim=1) if self.normalize else y


def test_torch_and_onnx_embedders_agree_and_fused_matching_runs(cards, tmp_path):
    from cardlib.export import export_onnx

    model = TinyNet().eval()
    torch_emb = TorchEmbedder(model, PRE)
    crops = [noisy(cards[c], 3) for c in list(cards)[:3]]
    t = torch_emb(crops)
    assert t.shape == (3, 32) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    for dynamic in (True, False):  # a static batch-1 graph (as Hailo wants) gets padded/chunked batches
        path = export_onnx(model, tmp_path / f"m{dynamic}.onnx", (PRE.height, PRE.width), dynamic_batch=dynamic,
                           normalize_output=False, simplify=False, preprocess=PRE)
        onnx_emb = OnnxEmbedder(path, PRE)
        assert onnx_emb.model_id.startswith("onnx-sha256:")
        assert np.min(np.sum(onnx_emb(crops) * t, axis=1)) > 0.9999
    gallery = build_gallery(cards, onnx_emb)
    assert gallery.model_id == onnx_emb.model_id and gallery.dim == 32
    with pytest.raises(ValueError, match="did not build"):
        FusedMatcher(gallery, torch_emb)
    res = FusedMatcher(gallery, onnx_emb).match(crops, top_k=3)
    assert [r[0].card_id for r in res] == list(cards)[:3]  # hash carries a random-weight embedding here


def photo_of(card, seed):
    """A card lying on a dark textured table, slightly rotated, in a 4:3 frame."""
    rng = np.random.default_rng(seed)
    photo = np.clip(rng.normal(45, 8, (480, 640, 3)), 0, 255).astype(np.uint8)
    h, w = card.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[230, 70], [420, 85], [405, 350], [215, 335]])
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(card, m, (640, 480))
    inside = cv2.warpPerspective(np.full((h, w), 255, np.uint8), m, (640, 480)) > 127
    photo[inside] = warped[inside]
    return photo


def test_recognize_photos_reports_bad_files_and_goes_on(cards, tmp_path):
    ids = list(cards)
    matcher = FusedMatcher(build_gallery(cards, None), method="hash")
    good = tmp_path / "good.jpg"
    # stored turned 90° with EXIF "rotate 90° clockwise to view": only an EXIF-aware loader sees it upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(photo_of(cards[ids[4]], 1))).save(good, quality=95, exif=exif)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    blank = np.full((480, 640, 3), 90, np.uint8)
    rows = recognize_photos([broken, good, tmp_path / "missing.png", photo_of(cards[ids[7]], 2), blank], matcher, top_k=2)
    assert len(rows) == 5
    assert set(rows[0]) == {"photo", "error"} and "broken.jpg" in rows[0]["photo"]
    assert "error" in rows[2] and "missing.png" in rows[2]["photo"]
    assert rows[1]["found"] and rows[1]["matches"][0]["card_id"] == ids[4]
    assert rows[3]["found"] and rows[3]["matches"][0]["card_id"] == ids[7] and rows[3]["photo"] == "array[3]"
    assert rows[4]["found"] is False and len(rows[4]["matches"]) == 2  # whole-image fallback still answers
    assert set(rows[1]) == {"photo", "found", "matches", "unknown"}
    assert set(rows[1]["matches"][0]) == {"card_id", "name", "score", "hash_score", "embedding_score"}
    json.dumps(rows, allow_nan=False)


def test_gallery_check_keeps_the_outline_that_shows_a_gallery_card(cards):
    ids = list(cards)
    bits = card_hashes(PRE.resize_uint8(cards[c]) for c in ids)
    card, other = PRE.resize_uint8(cards[ids[5]]), PRE.resize_uint8(cards[ids[6]])
    rng = np.random.default_rng(1)
    not_a_card = cv2.resize(rng.integers(0, 255, (7, 5, 3)).astype(np.uint8), (PRE.width, PRE.height))

    def cand(crop, x0=0):  # a candidate outline 100x140 px at x0: same x0, same object
        q = np.float32([[x0, 0], [x0 + 100, 0], [x0 + 100, 140], [x0, 140]])
        return CardCandidate(corners=q, crop=crop, confidence=0.9, upright=None)

    # the finder's first outline was wrong; the alternative shows the card upside down
    k, sims = gallery_check([cand(not_a_card), cand(noisy(card[::-1, ::-1], 1), 10)], bits)
    assert k == 1 and sims[1] > sims[0] + 0.1
    assert gallery_check([cand(noisy(card, 2)), cand(not_a_card, 10)], bits)[0] == 0  # the right first choice stays
    assert gallery_check([cand(not_a_card), cand(card, 10)], bits, margin=1.0)[0] == 0  # must win by the margin
    # another card beside the one aimed at, seen more clearly: the aimed card keeps its place, since it is a card
    aimed, clean = noisy(card, 8, sigma=80), other  # matches its card ~0.89, the clean one 1.0
    k, sims = gallery_check([cand(aimed), cand(clean, 300)], bits)
    assert k == 0 and sims[1] > sims[0] + 0.04 and sims[0] >= GALLERY_MATCH_MIN
    # ... unless the finder's choice matches no card: then another object may replace it
    assert gallery_check([cand(not_a_card), cand(clean, 300)], bits)[0] == 1
    with pytest.raises(ValueError, match="at least one"):
        gallery_check([], bits)


def test_choose_mix_protects_the_worst_group():
    # each query: its true card and one wrong card; true ranks first iff a·dh + (1−a)·de > 0 (dh, de: true − wrong)
    def right_below(t):  # hash wrong, embedding right: right for a < t
        return 1.0 - 1.0 / t, 1.0

    def right_above(t):  # hash right, embedding wrong: right for a > t
        return 1.0, -t / (1.0 - t)

    queries = ([(right_below(0.72), "seen")] * 6 + [(right_below(0.57), "seen")] * 4
               + [(right_below(0.32), "seen")] * 5 + [(right_above(0.52), "novel")] * 4
               + [(right_below(0.32), "novel")])
    zh = np.array([v for (dh, _), _ in queries for v in (dh, 0.0)])
    ze = np.array([v for (_, de), _ in queries for v in (de, 0.0)])
    label = np.tile([True, False], len(queries))
    starts = np.arange(0, 2 * len(queries), 2)
    groups = [g for _, g in queries]
    # most queries right overall (16 of 20) at a < 0.32, where novel cards get 1 of 5 against hashing's 4 of 5
    assert choose_mix(zh, ze, label, starts) < 0.32
    # with groups: 0.52 < a < 0.57 keeps novel at hashing's 4 of 5 and costs seen cards the least (10 of 15)
    assert 0.52 < choose_mix(zh, ze, label, starts, groups) < 0.57
    with pytest.raises(ValueError, match="group labels"):
        choose_mix(zh, ze, label, starts, groups[:-1])

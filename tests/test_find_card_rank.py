"""The outline ranker of find_card: fitted on simulated photos, it must pick the card's outline at least as often as
the outline rules do, and the shipped weights must match the features this cardlib computes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cardlib.data.camera import simulate_photo
from cardlib.data.catalogue import synthetic_catalogue
from cardlib.find_card_rank import FEATURES, WEIGHTS
from cardlib.find_card_rank_fit import fit_ranker, pick_rates, ranking_example


def examples(seed: int, n: int) -> list:
    cat = synthetic_catalogue(n_cards=n, n_sets=2, seed=seed)
    out = []
    for i, cid in enumerate(cat.ids):
        ph = simulate_photo(cat.image(cid), seed=seed * 1000 + i, photo_size=(240, 320), difficulty=1.0)
        out.append(ranking_example(ph.image, ph.corners))
    return out


@pytest.fixture(scope="module")
def train_examples():
    return examples(11, 40)


def test_fitted_ranker_picks_the_card_at_least_as_often_as_the_rules(train_examples):
    weights = fit_ranker(train_examples)
    assert weights["features"] == list(FEATURES) and len(weights["coef"]) == len(FEATURES)
    rates = pick_rates(train_examples, weights)
    assert rates["any_candidate"] >= rates["ranker"] >= rates["rules"]
    assert rates["ranker"] > 0.5


def test_hidden_units_learn_what_a_linear_score_cannot():
    # the card's outline is the one where two features agree (both high or both low): an interaction, like "a ring
    # outside matters only where the card-mask network agrees". No weighting of the two alone ranks it first.
    rng = np.random.default_rng(0)
    a, b = FEATURES.index("mask_agreement"), FEATURES.index("ring_outside")
    pools = []
    for _ in range(200):
        x = rng.normal(size=(4, len(FEATURES)))
        x[:, a] = [1, 1, -1, -1]
        x[:, b] = [1, -1, 1, -1]
        card = int(rng.choice([0, 3]))  # agreeing: (1, 1) or (-1, -1); the other agreeing row is a decoy...
        x[3 - card, b] *= -1  # ...made to disagree, so exactly one outline agrees
        iou = np.zeros(4)
        iou[card] = 0.95
        pools.append((x, iou))
    linear = pick_rates(pools, fit_ranker(pools, hidden=0))["ranker"]
    hidden = pick_rates(pools, fit_ranker(pools, hidden=8))["ranker"]
    assert linear < 0.75 and hidden > 0.95


def test_without_shipped_weights_the_rules_choice_stands(train_examples, monkeypatch):
    import cardlib.find_card_rank as rank
    monkeypatch.setattr(rank, "_weights", lambda: None)
    for x, _ in (e for e in train_examples if e is not None and len(e[0]) > 1):
        assert int(np.argmax(rank.outline_scores(x))) == int(np.argmax(x[:, FEATURES.index("chosen")]))


def test_fit_refuses_photos_without_the_card_outline():
    with pytest.raises(ValueError, match="no photo"):
        fit_ranker([None, None])
    x = np.zeros((3, len(FEATURES)))
    with pytest.raises(ValueError, match="nothing to learn"):
        fit_ranker([(x, np.array([0.2, 0.5, 0.1]))])


def test_shipped_weights_match_the_features_and_beat_the_rules_on_fresh_photos():
    d = json.loads(WEIGHTS.read_text())
    assert d["features"] == list(FEATURES)
    assert all(np.isfinite(d[k]).all() and len(d[k]) == len(FEATURES) for k in ("mean", "scale", "coef"))
    rates = pick_rates(examples(23, 40), d)
    assert rates["ranker"] >= rates["rules"]


def test_aim_features_mark_a_clear_card_beside_a_more_central_one():
    from cardlib.find_card_band import outline_bands
    from cardlib.find_card_mask import card_probability
    from cardlib.find_card_rank import candidate_features

    def card_at(cx, cy, height):  # an upright 5:7 card outline, geometric order
        w = height * 5 / 7
        return np.array([[cx - w / 2, cy - height / 2], [cx + w / 2, cy - height / 2], [cx + w / 2, cy + height / 2],
                         [cx - w / 2, cy + height / 2]])

    aimed, beside, far_box = card_at(320, 240, 200), card_at(540, 250, 190), card_at(560, 60, 60)
    rgb = np.random.default_rng(0).integers(90, 160, (480, 640, 3)).astype(np.uint8)
    cands = [(beside, 0.95), (aimed, 0.9), (far_box, 0.9)]  # the card beside has the cleaner edges
    x = candidate_features(cands, beside, rgb, card_probability(rgb), outline_bands(rgb, [q for q, _ in cands]))
    col = {f: x[:, FEATURES.index(f)] for f in ("off_centre", "aimed_rival", "clear_apart")}
    assert col["off_centre"][1] < 0.1 < col["off_centre"][0]
    assert list(col["aimed_rival"]) == [1.0, 0.0, 0.0]  # a small box is no rival: not a card's size
    assert list(col["clear_apart"]) == [0.5, 0.5, 0.0]

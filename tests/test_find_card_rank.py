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

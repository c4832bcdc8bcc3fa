"""Retrieval metric maths on hand-made cases whose answers are worked out in the comments."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cardlib.evaluate import (  # noqa: E402
    bucket, evaluate_retrieval, gallery_size_curve, gates, mean_average_precision, open_set_report,
    plot_accuracy_vs_latency, plot_factor_bars, plot_failure_gallery, plot_gallery_size_curve,
    plot_similarity_distributions, ranked_ids, relevance_mask, reprint_confusions, topk_accuracy,
)

GALLERY = ["a", "b", "c", "d"]


def test_topk_accuracy_by_hand():
    ranked = [["a", "b", "c"], ["b", "a", "c"], ["c", "b", "a"]]
    assert topk_accuracy(ranked, ["a", "a", "a"], 1) == pytest.approx(1 / 3)
    assert topk_accuracy(ranked, ["a", "a", "a"], 2) == pytest.approx(2 / 3)
    assert topk_accuracy(ranked, ["a", "a", "a"], 3) == 1.0
    # a set of acceptable ids (e.g. both foil variants) counts a hit on any of them
    assert topk_accuracy(ranked, [{"x", "a"}, {"c"}, {"b"}], 1) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        topk_accuracy(ranked, ["a"], 1)


def test_map_by_hand_with_several_relevant_cards_and_ties():
    s = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    mask = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    # query 0: relevant at ranks 1 and 3 → (1/1 + 2/3) / 2 = 5/6; query 1: rank 2 → 1/2; query 2 has none: skipped
    assert mean_average_precision(s, mask) == pytest.approx((5 / 6 + 1 / 2) / 2)
    # a tie is broken against the relevant card: [0.5 (relevant), 0.5, 0.1] → rank 2 → AP 1/2
    assert mean_average_precision(np.array([[0.5, 0.5, 0.1]]), np.array([[1, 0, 0]], bool)) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_average_precision(s, mask[:, :2])


def test_evaluate_retrieval_scores_ranked_lists_and_slices():
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],  # true a: rank 1
        [0.9, 0.8, 0.1, 0.0],  # true b: rank 2
        [0.1, 0.2, 0.3, 0.9],  # true c: rank 2
        [0.5, 0.4, 0.3, 0.2],  # true "zz": not in the gallery → unknown, excluded
    ])
    true = ["a", "b", "c", "zz"]
    factors = [{"glare": 0.0, "upside_down": False, "angle_deg": 5.0, "sleeve": "none"},
               {"glare": 0.8, "upside_down": True, "angle_deg": 25.0, "sleeve": "penny"},
               {"glare": 0.2, "upside_down": True, "angle_deg": 5.0, "sleeve": "none"},
               {"glare": 0.9, "upside_down": False, "angle_deg": 50.0, "sleeve": "none"}]
    factors[0]["seed"] = 17  # not a hard case: not sliced unless asked for
    rep = evaluate_retrieval(scores, true, GALLERY, factors, k=2)
    assert "seed" not in rep["by_factor"]
    assert (rep["n"], rep["n_unknown"]) == (3, 1)
    assert rep["top1"] == pytest.approx(1 / 3) and rep["top2"] == 1.0
    assert rep["map"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    ud = rep["by_factor"]["upside_down"]
    assert ud["yes"]["n"] == 2 and ud["yes"]["top1"] == 0.0 and ud["no"]["n"] == 1 and ud["no"]["top1"] == 1.0
    assert set(rep["by_factor"]["glare"]) == {"none", "low", "high"}  # the unknown query's 0.9 is only counted as unknown
    assert rep["by_factor"]["glare"]["high"]["n"] == 1
    assert rep["by_factor"]["angle_deg"]["0-10"]["n"] == 2 and rep["by_factor"]["angle_deg"]["20-30"]["top1"] == 0.0
    assert rep["by_factor"]["sleeve"]["penny"]["n"] == 1
    # the same queries as ranked lists give the same numbers
    ranked = ranked_ids(scores, GALLERY, 4)
    assert ranked[1][:2] == ["a", "b"]
    rep2 = evaluate_retrieval(ranked, true, GALLERY, k=2)
    assert (rep2["top1"], rep2["top2"], rep2["map"]) == pytest.approx((rep["top1"], rep["top2"], rep["map"]))
    with pytest.raises(ValueError):
        evaluate_retrieval(scores[:, :3], true, GALLERY)
    assert relevance_mask(true, GALLERY).sum(axis=1).tolist() == [1, 1, 1, 0]


def test_buckets_are_fixed_and_readable():
    assert bucket("angle_deg", 12) == "10-20" and bucket("angle_deg", 0) == "none"
    assert bucket("rotation_deg", 350) == "5-15"  # −10°
    assert bucket("rotation_deg", 178) == "0-5"  # 2° off upside down: the flip is its own slice
    assert bucket("rotation_deg", -100) == "45-90"
    assert bucket("jpeg_quality", 35) == "0-40" and bucket("holo_sheen", 0.3) == "0.25-0.4"
    assert bucket("glare", 0.5) == "mid" and bucket("sleeve", True) == "yes" and bucket("sleeve", None) == "none"
    assert bucket("neighbours", 0) == "none" and bucket("neighbours", 1) == "1" and bucket("neighbours", 2) == "2"
    assert bucket("scale", 0.2) == "0-0.3" and bucket("scale", 0.95) == "0.6-1"


def test_reprint_confusions_count_only_same_artwork_mistakes():
    artwork = {"s1-1": "art1", "s2-7": "art1", "s1-2": "art2", "s1-3": "art3"}
    pred = ["s2-7", "s1-2", "s1-3", "s1-1"]
    true = ["s1-1", "s1-3", "s1-3", "s1-1"]
    assert reprint_confusions(pred, true, artwork) == 1  # only s2-7 for s1-1 shares artwork


def test_open_set_report_by_hand():
    # q0 known right 0.9 kept; q1 known right 0.4 rejected (a right answer lost); q2, q4 unknown rejected; q3 unknown
    # 0.8 kept (a wrong answer); q5 known but matched wrong 0.45 rejected (nothing lost); q6 known wrong 0.7 kept
    rep = open_set_report([0.9, 0.4, 0.3, 0.8, 0.2, 0.45, 0.7], [True, True, False, False, False, True, True],
                          threshold=0.5, correct=[True, True, False, False, False, False, False])
    assert rep["rejected"] == 4 and rep["n_known"] == 4 and rep["n_unknown"] == 3
    assert rep["unknown_precision"] == pytest.approx(2 / 4) and rep["unknown_recall"] == pytest.approx(2 / 3)
    assert rep["reject_precision"] == pytest.approx(3 / 4) and rep["wrong_recall"] == pytest.approx(3 / 5)
    assert rep["right_rejected_rate"] == pytest.approx(1 / 2) and rep["coverage"] == pytest.approx(3 / 7)
    assert rep["answered_accuracy"] == pytest.approx(1 / 3) and rep["accuracy_without_rejection"] == pytest.approx(2 / 7)
    # a card absent from the gallery can never be a right answer, whatever `correct` says
    assert open_set_report([0.9], [False], 0.5, [True])["answered_accuracy"] == 0.0


def test_gallery_size_curve_keeps_true_cards_and_drops_with_distractors():
    # query 0 (true a) is beaten by distractor d; query 1 (true b) is always right
    scores = np.array([[0.5, 0.1, 0.0, 0.9], [0.1, 0.9, 0.2, 0.3]])
    curve = gallery_size_curve({"hash": scores, "fused": scores[:, [0, 1, 2, 3]]}, ["a", "b"], GALLERY, sizes=[1, 4])
    assert curve["sizes"] == [2, 4]  # a gallery never shrinks below the true cards
    assert curve["hash"] == [1.0, 0.5] and curve["fused"] == [1.0, 0.5]


def test_gates_pass_fail_and_missing():
    ok = gates({"teacher_top1": 0.9, "student_top1": 0.882, "int8_top1": 0.875}, 0.97, 0.01, True)
    assert all(g["pass"] for g in ok.values())
    assert ok["retention"]["value"] == pytest.approx(0.98)
    bad = gates({"teacher_top1": 0.9, "student_top1": 0.8, "int8_top1": 0.7}, 0.97, 0.01, False)
    assert not any(g["pass"] for g in bad.values())
    missing = gates({"teacher_top1": 0.9, "student_top1": 0.9}, 0.97, 0.01, True)
    assert missing["int8_drop"] == {"value": None, "threshold": 0.01, "pass": False}


def test_plots_return_figures():
    rep = evaluate_retrieval(np.eye(4), GALLERY, GALLERY, [{"glare": g} for g in (0.0, 0.2, 0.5, 0.9)])
    img = np.zeros((70, 50, 3), np.uint8)
    figs = [plot_accuracy_vs_latency([{"variant": "fp32", "top1": 0.9, "latency_ms": 12.0}]),
            plot_factor_bars({"hash": rep, "fused": rep}),
            plot_failure_gallery([(img, img, img, "s1-1 → s2-7")]),
            plot_similarity_distributions(np.eye(4), np.eye(4, dtype=bool)),
            plot_gallery_size_curve({"sizes": [2, 4], "hash": [1.0, 0.5]})]
    for fig in figs:
        assert isinstance(fig, matplotlib.figure.Figure) and fig.axes
        plt.close(fig)

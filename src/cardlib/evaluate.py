"""Retrieval metrics (top-k, mAP), slicing by photo factor, open-set report, gallery-size curve, gates, plots."""
from __future__ import annotations

from collections import defaultdict
from typing import Collection, Mapping, Sequence

import numpy as np

TrueIds = Sequence[str | Collection[str]]  # one id per query, or a set when several gallery cards count as right

# the camera simulator's factors that name a hard case users report (seed, exposure, ... are not sliced by default)
DEFAULT_SLICES = ("glare", "glare_strength", "holo_sheen", "sleeve", "sleeve_reflection", "occlusion", "angle_deg",
                  "rotation_deg", "upside_down", "blur", "corner_error", "cropped", "lowres", "jpeg_quality", "neighbours")
# fixed edges keep slices comparable between runs; a bucket is (lo, hi]; other numbers go in thirds of 0..1
FACTOR_EDGES = {
    "angle_deg": (0, 10, 20, 30, 45, 90),  # camera tilt away from the card's normal
    "rotation_deg": (0, 5, 15, 45, 90),  # in-plane rotation away from the nearest of 0° / 180° (flips sliced apart)
    "glare_strength": (0, 0.5, 0.7, 1),
    "holo_sheen": (0, 0.25, 0.4, 1),
    "corner_error": (0, 0.01, 0.02, 0.04, 1),  # mean corner error / card diagonal
    "cropped": (0, 0.1, 0.2, 1),  # fraction of the card outside the frame
    "lowres": (0, 1.05, 1.5, 2, 10),  # downsampling factor; ≤ 1.05 is native resolution
    "jpeg_quality": (0, 40, 60, 80, 100),
    "scale": (0, 0.3, 0.6, 1.0),  # the card's height / the photo's
}
COUNTS = ("neighbours",)  # factors that count things (other cards in view): sliced by the count itself


def _as_set(t) -> frozenset:
    return frozenset([t]) if isinstance(t, str) else frozenset(t)


def topk_accuracy(ranked_ids: Sequence[Sequence[str]], true_ids: TrueIds, k: int) -> float:
    """Fraction of queries whose top-k ranked ids contain a true id."""
    if len(ranked_ids) != len(true_ids):
        raise ValueError(f"{len(ranked_ids)} rankings for {len(true_ids)} queries")
    hits = [bool(_as_set(t) & set(list(r)[:k])) for r, t in zip(ranked_ids, true_ids)]
    return float(np.mean(hits)) if hits else float("nan")


def _ranks_and_ap(scores: np.ndarray, true_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: rank of the first relevant card and average precision, ties broken against the relevant cards."""
    ranks, aps = np.full(len(scores), np.inf), np.full(len(scores), np.nan)
    for q, (s, r) in enumerate(zip(scores, true_mask)):
        if not r.any():
            continue
        order = np.lexsort((r, -s))  # by score descending; within a tie, wrong cards first (pessimistic)
        hit = r[order]
        pos = np.flatnonzero(hit) + 1
        ranks[q] = pos[0]
        aps[q] = float(np.mean(np.arange(1, len(pos) + 1) / pos))
    return ranks, aps


def mean_average_precision(scores: np.ndarray, true_mask: np.ndarray) -> float:
    """mAP over queries with at least one relevant card; AP averages precision at each relevant card's rank."""
    scores, true_mask = np.asarray(scores, float), np.asarray(true_mask, bool)
    if scores.shape != true_mask.shape:
        raise ValueError(f"scores {scores.shape} and true_mask {true_mask.shape} differ in shape")
    aps = _ranks_and_ap(scores, true_mask)[1]
    return float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")


def bucket(name: str, value) -> str:
    """A readable slice label for one factor value (bools yes/no, zero = none, numbers in fixed or 1/3 steps)."""
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    v = float(value)
    if name == "rotation_deg":
        v = abs((v + 90.0) % 180.0 - 90.0)
    if v == 0:
        return "none"
    if name in COUNTS:
        return str(int(v))
    edges = FACTOR_EDGES.get(name, (0, 1 / 3, 2 / 3, 1.0))  # strengths in 0..1 by default
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo < abs(v) <= hi:
            return f"{lo:g}-{hi:g}" if name in FACTOR_EDGES else ("low", "mid", "high")[edges.index(lo)]
    return f">{edges[-1]:g}"


def relevance_mask(true_ids: TrueIds, gallery_ids: Sequence[str]) -> np.ndarray:
    """(Nq, Ng) bool: which gallery cards are right answers for each query."""
    col = {g: j for j, g in enumerate(gallery_ids)}
    mask = np.zeros((len(true_ids), len(gallery_ids)), bool)
    for q, t in enumerate(true_ids):
        mask[q, [col[c] for c in _as_set(t) if c in col]] = True
    return mask


def evaluate_retrieval(scores_or_ranked, true_ids: TrueIds, gallery_ids: Sequence[str],
                       factors: Sequence[Mapping] | None = None, k: int = 5,
                       slice_by: Sequence[str] = DEFAULT_SLICES) -> dict:
    """top-1 / top-k / mAP over queries whose card is in the gallery, overall and per factor bucket.

    scores_or_ranked: (Nq, Ng) scores aligned with gallery_ids, or one ranked id list per query.
    Queries without a true card in the gallery (open-set unknowns) are only counted, as n_unknown.
    factors: one dict per query (e.g. the camera simulator's); the keys in slice_by are bucketed with `bucket`.
    """
    truth = [_as_set(t) for t in true_ids]
    if isinstance(scores_or_ranked, np.ndarray):
        if scores_or_ranked.shape != (len(truth), len(gallery_ids)):
            raise ValueError(f"scores shape {scores_or_ranked.shape} != (queries, gallery) = {(len(truth), len(gallery_ids))}")
        ranks, aps = _ranks_and_ap(scores_or_ranked, relevance_mask(truth, gallery_ids))
    else:
        gallery = set(gallery_ids)
        ranks, aps = np.full(len(truth), np.inf), np.full(len(truth), np.nan)
        for q, (ranked, t) in enumerate(zip(scores_or_ranked, truth)):
            rel = t & gallery
            if rel:
                pos = np.array([i + 1 for i, c in enumerate(ranked) if c in rel])
                ranks[q] = pos[0] if len(pos) else np.inf
                aps[q] = float(np.sum(np.arange(1, len(pos) + 1) / pos) / len(rel)) if len(pos) else 0.0
    known = ~np.isnan(aps)

    def summary(sel: np.ndarray) -> dict:
        sel = sel & known
        n = int(sel.sum())
        return {"n": n, "top1": float(np.mean(ranks[sel] <= 1)) if n else float("nan"),
                f"top{k}": float(np.mean(ranks[sel] <= k)) if n else float("nan"),
                "map": float(np.mean(aps[sel])) if n else float("nan")}

    out = {**summary(np.ones(len(truth), bool)), "n_unknown": int((~known).sum()), "by_factor": {}}
    if factors is not None:
        if len(factors) != len(truth):
            raise ValueError(f"{len(factors)} factor records for {len(truth)} queries")
        labels: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for q, f in enumerate(factors):
            for name, value in f.items():
                if name in slice_by and isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating, str)) or value is None:
                    labels[name][bucket(name, value)].append(q)
        for name, groups in sorted(labels.items()):
            out["by_factor"][name] = {b: summary(np.isin(np.arange(len(truth)), idx)) for b, idx in sorted(groups.items())}
    return out


def ranked_ids(scores: np.ndarray, gallery_ids: Sequence[str], k: int) -> list[list[str]]:
    """Top-k gallery ids per query from a score matrix, best first."""
    idx = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return [[gallery_ids[j] for j in row] for row in idx]


def reprint_confusions(pred_ids: Sequence[str], true_ids: Sequence[str], artwork_of: Mapping[str, str]) -> int:
    """Wrong answers that share the true card's artwork: reprint / variant confusions."""
    return sum(1 for p, t in zip(pred_ids, true_ids)
               if p != t and p in artwork_of and t in artwork_of and artwork_of[p] == artwork_of[t])


def open_set_report(top_scores: Sequence[float], is_known: Sequence[bool], threshold: float,
                    correct: Sequence[bool]) -> dict:
    """The "unknown" decision (top score < threshold) on queries whose card is in the gallery or not (`is_known`)
    and whose top match is right or not (`correct`). A query has no right answer when its card is absent or its top
    match is wrong: rejecting it loses nothing.

    unknown_precision / unknown_recall: against the truth "card not in the gallery"; reject_precision /
    wrong_recall: against "no right answer"; right_rejected_rate: right answers lost; answered_accuracy: right answers
    among the queries answered (coverage: their share), against accuracy_without_rejection."""
    s, known = np.asarray(top_scores, float), np.asarray(is_known, bool)
    right = np.asarray(correct, bool) & known
    rejected = ~(s >= threshold)

    def share(num, den):
        return float(num.sum() / den.sum()) if den.any() else float("nan")

    return {"threshold": float(threshold), "n_known": int(known.sum()), "n_unknown": int((~known).sum()),
            "rejected": int(rejected.sum()), "unknown_precision": share(rejected & ~known, rejected),
            "unknown_recall": share(rejected & ~known, ~known), "reject_precision": share(rejected & ~right, rejected),
            "wrong_recall": share(rejected & ~right, ~right), "right_rejected_rate": share(rejected & right, right),
            "coverage": float((~rejected).mean()) if len(s) else float("nan"),
            "answered_accuracy": share(right & ~rejected, ~rejected),
            "accuracy_without_rejection": float(right.mean()) if len(s) else float("nan")}


def gallery_size_curve(score_matrices: Mapping[str, np.ndarray], true_ids: Sequence[str], gallery_ids: Sequence[str],
                       sizes: Sequence[int], draws: int = 3, seed: int = 0) -> dict:
    """top-1 per method as the gallery grows: every true card is kept, distractors are random subsets.

    Scores are re-ranked within each subset as computed over the full gallery (per-query calibration included).
    """
    col = {g: j for j, g in enumerate(gallery_ids)}
    true_cols = sorted({col[t] for t in true_ids if t in col})
    rest = np.setdiff1d(np.arange(len(gallery_ids)), true_cols)
    rng = np.random.default_rng(seed)
    sizes = sorted({min(max(int(s), len(true_cols)), len(gallery_ids)) for s in sizes})
    curve: dict = {"sizes": sizes, **{m: [] for m in score_matrices}}
    for size in sizes:
        subsets = [np.concatenate([true_cols, rng.choice(rest, size - len(true_cols), replace=False)]) for _ in range(draws)]
        for method, sc in score_matrices.items():
            accs = [evaluate_retrieval(sc[:, cols], true_ids, [gallery_ids[j] for j in cols], k=1)["top1"] for cols in subsets]
            curve[method].append(float(np.mean(accs)))
    return curve


def gates(metrics: Mapping[str, float], retention_min: float, int8_drop_max: float, parity_ok: bool | None) -> dict:
    """Release gates: student/teacher top-1 retention, INT8 top-1 drop, ONNX parity. A missing metric fails."""
    def gate(value, threshold, ok):
        return {"value": value, "threshold": threshold, "pass": bool(value is not None and ok)}

    teacher, student, int8 = (metrics.get(k) for k in ("teacher_top1", "student_top1", "int8_top1"))
    retention = student / teacher if teacher and student is not None else None
    drop = student - int8 if student is not None and int8 is not None else None
    return {"retention": gate(retention, retention_min, retention is not None and retention >= retention_min),
            "int8_drop": gate(drop, int8_drop_max, drop is not None and drop <= int8_drop_max),
            "onnx_parity": gate(parity_ok, True, parity_ok is True)}


# ---------------------------------------------------------------- plots (each returns a matplotlib Figure)

def _figure(w: float = 6, h: float = 4, **kw):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h), **kw)


def plot_accuracy_vs_latency(rows: Sequence[Mapping]):
    """One point per model variant: rows of {"variant", "top1", "latency_ms"}."""
    fig, ax = _figure()
    for r in rows:
        ax.scatter(r["latency_ms"], r["top1"])
        ax.annotate(r["variant"], (r["latency_ms"], r["top1"]), textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel="latency per photo (ms)", ylabel="top-1", title="accuracy vs latency")
    return fig


def plot_factor_bars(reports: Mapping[str, dict], metric: str = "top1"):
    """Grouped bars of a metric per factor bucket, one colour per method (reports from evaluate_retrieval)."""
    labels = sorted({f"{f}={b}" for rep in reports.values() for f, bs in rep["by_factor"].items() for b in bs})
    fig, ax = _figure(max(6, 0.45 * len(labels)), 4)
    width = 0.8 / max(len(reports), 1)
    for i, (method, rep) in enumerate(reports.items()):
        vals = [rep["by_factor"].get(lab.split("=", 1)[0], {}).get(lab.split("=", 1)[1], {}).get(metric, np.nan) for lab in labels]
        ax.bar(np.arange(len(labels)) + i * width, vals, width, label=method)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel=metric, ylim=(0, 1.05), title=f"{metric} by photo factor")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_failure_gallery(failures: Sequence[tuple], max_rows: int = 12):
    """Rows of (photo, predicted card image, true card image, caption): what went wrong, side by side."""
    failures = list(failures)[:max_rows]
    fig, axes = _figure(7, 2.4 * max(len(failures), 1), nrows=max(len(failures), 1), ncols=3, squeeze=False)
    for row, item in zip(axes, failures):
        for ax, img, title in zip(row, item[:3], ("photo", "predicted", "truth")):
            ax.imshow(img)
            ax.set_title(title if title != "photo" or len(item) < 4 else str(item[3]), fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_similarity_distributions(scores: np.ndarray, true_mask: np.ndarray, title: str = "", max_negatives: int = 200_000):
    """Histograms of scores for true (query, card) pairs vs wrong pairs: the overlap is what fusion must fix."""
    s, m = np.asarray(scores, float), np.asarray(true_mask, bool)
    pos, neg = s[m & np.isfinite(s)], s[~m & np.isfinite(s)]
    if len(neg) > max_negatives:
        neg = np.random.default_rng(0).choice(neg, max_negatives, replace=False)
    fig, ax = _figure()
    ax.hist(neg, bins=60, density=True, alpha=0.6, label=f"non-matches (n={len(neg)})")
    ax.hist(pos, bins=60, density=True, alpha=0.6, label=f"matches (n={len(pos)})")
    ax.set(xlabel="score", ylabel="density", title=title or "similarity of matches vs non-matches")
    ax.legend()
    return fig


def plot_gallery_size_curve(curve: Mapping):
    """top-1 per method against gallery size (from gallery_size_curve)."""
    fig, ax = _figure()
    for method, vals in curve.items():
        if method != "sizes":
            ax.plot(curve["sizes"], vals, marker="o", label=method)
    ax.set(xscale="log", xlabel="gallery size (cards)", ylabel="top-1", ylim=(0, 1.05), title="top-1 vs gallery size")
    ax.legend()
    return fig

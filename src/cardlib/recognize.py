"""Photo → card: perceptual-hash and embedding similarity over both orientations, fused, with open-set rejection."""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .find_card import both_orientations, find_card, load_rgb
from .gallery import Embedder, Gallery
from .hashing import GALLERY_ALTERNATIVES, card_hashes, gallery_check, hash_similarity
from .preprocess import Preprocess

Method = Literal["fused", "hash", "embedding"]
ORIENTATIONS = (0, 180)  # degrees: a rectified 5:7 crop can only be upright or upside down
QUERY_CHUNK = 128  # queries scored at once: bounds memory at (chunk × 2 × gallery) floats per signal


@dataclass(frozen=True)
class FusionWeights:
    """Log-odds that a candidate is the match = bias + hash·z_hash + embedding·z_embedding (z: per-query z-scores)."""

    hash: float = 1.0
    embedding: float = 1.0
    bias: float = 0.0
    shortlist_k: int = 20  # each signal's top-K; only their union is re-ranked by the fused score

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FusionWeights":
        return cls(float(d["hash"]), float(d["embedding"]), float(d["bias"]), int(d["shortlist_k"]))


@dataclass
class Match:
    """One ranked gallery card for a query; `score` is the method's ranking score (log-odds when fused)."""

    card_id: str
    name: str
    score: float
    hash_score: float  # 1 − Hamming/128, best orientation
    embedding_score: float  # cosine, best orientation (nan without an embedder)
    orientation: int  # 0 or 180: the reading of the crop that won
    unknown: bool = False  # the query's top score fell below the open-set threshold: no confident match


def _zscore(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = x.mean(axis=-1, keepdims=True), x.std(axis=-1, keepdims=True)
    sd = np.maximum(sd, 1e-6)  # a one-card gallery has no spread
    return (x - mu) / sd, mu, sd


@dataclass
class Signals:
    """Raw similarities per orientation, (N, 2, Ng), and their per-query calibration over the gallery."""

    hash2: np.ndarray
    embedding2: np.ndarray | None

    def __post_init__(self):
        self.hash = self.hash2.max(axis=1)
        self.hash_z, self._hmu, self._hsd = _zscore(self.hash)
        if self.embedding2 is not None:
            self.embedding = self.embedding2.max(axis=1)
            self.embedding_z, self._emu, self._esd = _zscore(self.embedding)
        else:
            self.embedding = np.full_like(self.hash, np.nan)
            self.embedding_z = None

    def candidates(self, k: int) -> np.ndarray:
        """(N, Ng) bool: the union of each signal's top-k cards."""
        mask = np.zeros(self.hash.shape, bool)
        for z in (self.hash_z, self.embedding_z):
            if z is not None:
                kk = min(k, z.shape[1])
                np.put_along_axis(mask, np.argpartition(-z, kk - 1, axis=1)[:, :kk], True, axis=1)
        return mask

    def fused(self, w: FusionWeights) -> np.ndarray:
        if self.embedding_z is None:
            raise ValueError("fusion needs embeddings: build the matcher with an embedder and an embedding gallery")
        logit = w.bias + w.hash * self.hash_z + w.embedding * self.embedding_z
        return np.where(self.candidates(w.shortlist_k), logit, -np.inf)

    def orientation(self, method: Method, w: FusionWeights, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Winning orientation (index 0/1) of the given (query, card) pairs under a method."""
        h = self.hash2[rows, :, cols]
        if method == "hash":
            return h.argmax(axis=1)
        e = self.embedding2[rows, :, cols]
        if method == "embedding":
            return e.argmax(axis=1)
        f = w.hash * (h - self._hmu[rows]) / self._hsd[rows] + w.embedding * (e - self._emu[rows]) / self._esd[rows]
        return f.argmax(axis=1)


class FusedMatcher:
    """Ranks gallery cards for rectified crops by hash, embedding or their fusion; flags unknown cards."""

    def __init__(self, gallery: Gallery, embedder: Embedder | None = None, weights: FusionWeights | None = None,
                 method: Method = "fused", unknown_threshold: float | None = None):
        if method not in ("fused", "hash", "embedding"):
            raise ValueError(f"method must be 'fused', 'hash' or 'embedding', got {method!r}")
        if method != "hash":
            if embedder is None or gallery.dim == 0:
                raise ValueError(f"method {method!r} needs an embedder and a gallery with embeddings; use method='hash'")
            if embedder.model_id != gallery.model_id:
                raise ValueError(f"embedder {embedder.model_id!r} did not build this gallery ({gallery.model_id!r})")
        self.gallery, self.embedder, self.method = gallery, embedder, method
        self.weights = weights or FusionWeights()
        self.unknown_threshold = unknown_threshold
        self.preprocess = Preprocess.from_dict(gallery.preprocess)

    def query_features(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Hashes (N, 2, 16) and embeddings (N, 2, D) of every crop upright and turned 180° (embeddings None for hash)."""
        crops = [self.preprocess.resize_uint8(c) for c in crops]
        both = [o for c in crops for o in both_orientations(c)]  # q0 up, q0 down, q1 up, ...
        bits = card_hashes(both).reshape(len(crops), 2, -1)
        emb = None if self.method == "hash" else self.embedder(both).reshape(len(crops), 2, -1)
        return bits, emb

    def signals_from_features(self, bits: np.ndarray, emb: np.ndarray | None) -> Signals:
        """Similarity of query features (from `query_features`) to every gallery card: the search itself."""
        n, ng = len(bits), len(self.gallery)
        hash2 = hash_similarity(bits.reshape(2 * n, -1), self.gallery.hashes, self.gallery.hash_signs).reshape(n, 2, ng)
        emb2 = None if emb is None else (emb.reshape(2 * n, -1) @ self.gallery.embeddings.T).reshape(n, 2, ng)
        return Signals(hash2, emb2)

    def signals(self, crops: Sequence[np.ndarray]) -> Signals:
        """Hash (and embedding) similarity of every crop, upright and turned 180°, to every gallery card."""
        return self.signals_from_features(*self.query_features(crops))

    def _method_scores(self, s: Signals) -> np.ndarray:
        return {"hash": lambda: s.hash, "embedding": lambda: s.embedding, "fused": lambda: s.fused(self.weights)}[self.method]()

    def scores(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, Ng) ranking scores of the matcher's method (fused: log-odds on the shortlist, −inf elsewhere)."""
        out = [self._method_scores(self.signals(crops[i : i + QUERY_CHUNK])) for i in range(0, len(crops), QUERY_CHUNK)]
        return np.concatenate(out) if out else np.zeros((0, len(self.gallery)), np.float32)

    def match(self, crops: Sequence[np.ndarray], top_k: int = 5) -> list[list[Match]]:
        """Top-k matches per crop, best first; every Match of a query carries its open-set `unknown` flag."""
        results: list[list[Match]] = []
        for i in range(0, len(crops), QUERY_CHUNK):
            s = self.signals(crops[i : i + QUERY_CHUNK])
            sc = self._method_scores(s)
            k = min(top_k, sc.shape[1])
            part = np.argpartition(-sc, k - 1, axis=1)[:, :k]  # a full sort of 20,000 cards per query costs more
            idx = np.take_along_axis(part, np.take_along_axis(-sc, part, axis=1).argsort(axis=1, kind="stable"), axis=1)
            rows = np.repeat(np.arange(len(sc)), k)
            orient = s.orientation(self.method, self.weights, rows, idx.ravel()).reshape(idx.shape)
            for q in range(len(sc)):
                top = sc[q, idx[q, 0]]
                unknown = bool(self.unknown_threshold is not None and not top >= self.unknown_threshold)
                results.append([Match(self.gallery.card_ids[g], self.gallery.names[g], float(sc[q, g]),
                                      float(s.hash[q, g]), float(s.embedding[q, g]), ORIENTATIONS[orient[q, j]], unknown)
                                for j, g in enumerate(idx[q]) if np.isfinite(sc[q, g])])
        return results


def _shortlist_hits(score: np.ndarray, label: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over per-query candidate segments: (does the true card rank first, its reciprocal rank) per query; ties lose."""
    has = np.add.reduceat(label, starts) > 0
    pos = np.maximum.reduceat(np.where(label, score, -np.inf), starts)
    query = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(score)]))
    above = np.add.reduceat(~label & (score >= pos[query]), starts)
    return has & (above == 0), np.where(has, 1.0 / (above + 1), 0.0)


def choose_mix(zh: np.ndarray, ze: np.ndarray, label: np.ndarray, starts: np.ndarray,
               groups: Sequence | None = None) -> float:
    """The weight a of a·z_hash + (1−a)·z_embedding over a ∈ {0, 0.05, …, 1} (candidate rows; `starts`: where each
    query's candidates begin). With query `groups` (e.g. seen / novel cards) the mix must first do least harm on
    its worst group: the highest min over groups of (its top-1 rate − that group's best single-signal top-1 rate);
    then the most queries right, then the best mean reciprocal rank; ties go to the most even mix."""
    alphas = sorted(np.linspace(0.0, 1.0, 21), key=lambda a: abs(a - 0.5))
    hits = {a: _shortlist_hits(a * zh + (1 - a) * ze, label, starts) for a in alphas}
    groups = np.zeros(len(starts), int) if groups is None else np.asarray(groups)
    if len(groups) != len(starts):
        raise ValueError(f"{len(groups)} group labels for {len(starts)} queries")
    masks = [groups == g for g in np.unique(groups)]
    best_single = [max(hits[0.0][0][m].mean(), hits[1.0][0][m].mean()) for m in masks]

    def objective(a):
        top1, rr = hits[a]
        worst = min(top1[m].mean() - b for m, b in zip(masks, best_single))
        return round(worst, 9), int(top1.sum()), float(rr.mean())

    return float(max(alphas, key=objective))


def fit_fusion(matcher: FusedMatcher, crops: Sequence[np.ndarray], true_ids: Sequence[str], shortlist_k: int = 20,
               C: float = 1.0, groups: Sequence | None = None) -> FusionWeights:
    """Fit the fusion on labelled validation crops, over the same candidate shortlist the matcher re-ranks.

    The mix a·z_hash + (1−a)·z_embedding is chosen on validation top-1 by `choose_mix` (with `groups`, one label per
    crop such as seen / novel, no group may lose more than it must to its best single signal), so each signal
    alone is among the choices and fusion never does worse on validation; a 1-D logistic regression of "this
    candidate is the true card" then scales the mix to log-odds (the fused score).
    """
    from sklearn.linear_model import LogisticRegression

    if matcher.method == "hash":
        raise ValueError("fit_fusion needs embedding signals (a matcher built with an embedder, method != 'hash')")
    if len(true_ids) != len(crops):
        raise ValueError(f"{len(true_ids)} labels for {len(crops)} validation crops")
    if groups is not None and len(groups) != len(crops):
        raise ValueError(f"{len(groups)} group labels for {len(crops)} validation crops")
    zh, ze, ys, counts = [], [], [], []
    for i in range(0, len(crops), QUERY_CHUNK):
        s = matcher.signals(crops[i : i + QUERY_CHUNK])
        cand = s.candidates(shortlist_k)
        truth = np.zeros_like(cand)
        for q, t in enumerate(true_ids[i : i + QUERY_CHUNK]):
            if t in matcher.gallery:
                truth[q, matcher.gallery.index_of(t)] = True
        zh.append(s.hash_z[cand]), ze.append(s.embedding_z[cand]), ys.append(truth[cand]), counts.append(cand.sum(1))
    zh, ze, y = np.concatenate(zh), np.concatenate(ze), np.concatenate(ys)
    starts = np.r_[0, np.cumsum(np.concatenate(counts))[:-1]]
    if y.all() or not y.any():
        raise ValueError("validation candidates must contain both true and wrong cards to fit the fusion")
    alpha = choose_mix(zh, ze, y, starts, groups)
    lr = LogisticRegression(C=C).fit((alpha * zh + (1 - alpha) * ze)[:, None], y)
    scale, bias = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    return FusionWeights(hash=float(alpha * scale), embedding=float((1 - alpha) * scale), bias=bias, shortlist_k=shortlist_k)


def fit_unknown_threshold(scores_known: Sequence[float], scores_unknown: Sequence[float],
                          target_precision: float = 0.9) -> float:
    """Threshold t (query is "unknown" when its top score < t) with the highest unknown-recall at ≥ target precision.

    `scores_known`: top scores of validation queries whose answer should stand; `scores_unknown`: of queries without
    a right answer (the card is not in the gallery, or the evaluation's choice: its top match is wrong).
    Without any threshold reaching the target it warns and returns −inf (nothing is rejected).
    """
    known, unknown = np.asarray(scores_known, float), np.asarray(scores_unknown, float)
    if not len(unknown):
        raise ValueError("need validation queries of cards absent from the gallery to fit the unknown threshold")
    values = np.unique(np.concatenate([known, unknown]))
    values = values[np.isfinite(values)]
    candidates = np.concatenate([(values[:-1] + values[1:]) / 2, values[-1:] + 1e-6]) if len(values) else values
    best_t, best_recall = -np.inf, -1.0
    for t in candidates:
        tp, fp = (unknown < t).sum(), (known < t).sum()
        precision, recall = tp / max(tp + fp, 1), tp / len(unknown)
        if tp and precision >= target_precision and recall > best_recall:
            best_t, best_recall = float(t), recall
    if best_recall < 0:
        warnings.warn(f"no threshold reaches unknown-card precision {target_precision}; rejection disabled", RuntimeWarning)
    return best_t


def _center_card(rgb: np.ndarray) -> np.ndarray:
    """The largest centred 5:7 portrait window: the whole-image fallback when no card outline is found."""
    h, w = rgb.shape[:2]
    ch, cw = (h, int(round(h * 5 / 7))) if w * 7 >= h * 5 else (int(round(w * 7 / 5)), w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return rgb[y : y + ch, x : x + cw]


def recognize_photos(photos: Sequence[str | Path | np.ndarray], matcher: FusedMatcher, top_k: int = 5) -> list[dict]:
    """Find, rectify and identify the card in each photo; an unreadable photo gets an "error" row, the rest go on."""
    rows: list[dict] = []
    crops, where = [], []
    pre = matcher.preprocess
    for i, photo in enumerate(photos):
        label = str(photo) if isinstance(photo, (str, Path)) else f"array[{i}]"
        try:
            rgb = load_rgb(photo)
        except Exception as exc:  # one bad file must not stop a batch of photos
            rows.append({"photo": label, "error": f"{type(exc).__name__}: {exc}"})
            continue
        found = find_card(rgb, out_size=(pre.height, pre.width), max_cards=1, alternatives=GALLERY_ALTERNATIVES)
        k = gallery_check(found, matcher.gallery.hashes, matcher.gallery.hash_signs)[0] if found else 0
        crops.append(found[k].crop if found else _center_card(rgb))
        rows.append({"photo": label, "found": bool(found)})
        where.append(len(rows) - 1)
    for r, matches in zip(where, matcher.match(crops, top_k=top_k) if crops else []):
        rows[r]["matches"] = [{"card_id": m.card_id, "name": m.name, "score": m.score, "hash_score": m.hash_score,
                               "embedding_score": None if np.isnan(m.embedding_score) else m.embedding_score}
                              for m in matches]
        rows[r]["unknown"] = matches[0].unknown
    return rows

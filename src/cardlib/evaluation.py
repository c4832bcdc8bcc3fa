"""The evaluation stage: every model variant × {hash, embedding, fused} × {seen, novel} × photo factor, on the
same crops; baselines, cost, gates, open-set rejection and the gallery-size curve."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cardlib.data.build import rows_for
from cardlib.data.catalogue import synthetic_catalogue
from cardlib.data.datasets import read_rgb
from cardlib.evaluate import evaluate_retrieval, gallery_size_curve, gates, open_set_report, relevance_mask, \
    reprint_confusions
from cardlib.gallery import Embedder, OnnxEmbedder, TorchEmbedder, build_gallery, catalogue_gallery
from cardlib.recognize import FusedMatcher, fit_fusion, fit_unknown_threshold
from cardlib.train.stage import data_root, load_model
from cardlib.train.tasks import RunData

METHODS = ("hash", "embedding", "fused")


@dataclass
class EvalSet:
    """The crops every variant and baseline sees, with their truth and photo factors."""

    rows: list[dict]
    crops: list[np.ndarray]

    @classmethod
    def of(cls, data: RunData, split: str) -> "EvalSet":
        rows = rows_for(data.rows, split)
        return cls(rows, [read_rgb(data.root / r["crop"]) for r in rows])

    @property
    def ids(self) -> list[str]:
        return [r["card_id"] for r in self.rows]

    def mask(self, novel: bool) -> np.ndarray:
        return np.array([r["novel"] == novel for r in self.rows], bool)


@dataclass
class Variant:
    name: str
    embedder: Embedder
    cost: dict = field(default_factory=dict)  # latency_ms, params, gflops, size_mb


def _profile(ctx, prefix: str) -> dict:
    return json.loads(ctx.upstream_path(prefix, "profile").read_text())


def _torch_cost(prof: dict) -> dict:
    return {"latency_ms": prof["batches"]["1"]["latency_ms"], "params": prof["params"],
            "gflops": round(prof["gflops_per_image"], 4), "size_mb": round(prof.get("file_size_mb", 0.0), 3)}


def _onnx_cost(path: Path, input_size, gflops: float, params: int) -> dict:
    from cardlib.export import onnx_latency

    lat = onnx_latency(path, (1,), tuple(input_size), runs=20)["1"]
    return {"latency_ms": lat["ms_per_batch"], "params": params, "gflops": gflops,
            "size_mb": round(path.stat().st_size / 2**20, 3)}


def model_variants(ctx, data: RunData) -> list[Variant]:
    """teacher, untrained teacher (baseline), student stage 1 and 2 (PyTorch), stage 2 ONNX fp32, INT8 (or HEF)."""
    import torch

    from cardlib.models.teacher import build_teacher

    p, pre = ctx.params, data.preprocess
    t = p.teacher
    torch.manual_seed(p.run.seed)
    untrained = build_teacher(t.preset, t.embed_dim, t.pool, None, tuple(p.data.input_size))
    prof = {k: _profile(ctx, k) for k in ("01", "02", "03")}
    out = [Variant("teacher", TorchEmbedder(load_model(ctx, "teacher"), pre), _torch_cost(prof["01"])),
           Variant("untrained teacher", TorchEmbedder(untrained, pre), _torch_cost(prof["01"])),
           Variant("student stage 1", TorchEmbedder(load_model(ctx, "stage1"), pre), _torch_cost(prof["02"])),
           Variant("student stage 2", TorchEmbedder(load_model(ctx, "stage2"), pre), _torch_cost(prof["03"]))]
    s2 = prof["03"]
    onnx = ctx.upstream_path("04", "onnx_cpu")
    out.append(Variant("stage 2 ONNX fp32", OnnxEmbedder(onnx, pre),
                       _onnx_cost(onnx, p.data.input_size, s2["gflops_per_image"], s2["params"])))
    hailo = ctx.upstream("05")
    if "int8_onnx" in hailo["outputs"]:
        int8 = ctx.upstream_path("05", "int8_onnx")
        out.append(Variant("stage 2 INT8 (emulated)", OnnxEmbedder(int8, pre),
                           _onnx_cost(int8, p.data.input_size, s2["gflops_per_image"], s2["params"])))
    return out


def evaluate_variant(v: Variant, data: RunData, val: EvalSet, test: EvalSet, shortlist_k: int, k: int) -> dict:
    """Gallery of all cards embedded by the variant; fusion fitted on validation crops; test reports per method."""
    gallery = catalogue_gallery(data.catalogue, v.embedder)
    matcher = FusedMatcher(gallery, v.embedder)
    weights = fit_fusion(matcher, val.crops, val.ids, shortlist_k=shortlist_k, groups=val.mask(True))
    s = matcher.signals(test.crops)
    scores = {"hash": s.hash, "embedding": s.embedding, "fused": s.fused(weights)}
    artwork = {c.card_id: c.artwork_id for c in data.catalogue}
    factors = [r["factors"] for r in test.rows]
    reports: dict = {}
    for method, sc in scores.items():
        pred = [gallery.card_ids[j] for j in np.argmax(sc, axis=1)]
        reports[method] = {"confusions": reprint_confusions(pred, test.ids, artwork)}
        for tag, novel in (("seen", False), ("novel", True)):
            m = test.mask(novel)
            if m.any():
                reports[method][tag] = evaluate_retrieval(sc[m], [test.ids[i] for i in np.flatnonzero(m)],
                                                          gallery.card_ids, [factors[i] for i in np.flatnonzero(m)], k=k)
        reports[method]["all"] = evaluate_retrieval(sc, test.ids, gallery.card_ids, factors, k=k)
    return {"variant": v.name, "cost": v.cost, "weights": weights.to_dict(), "reports": reports,
            "_scores": scores, "_gallery": gallery, "_matcher": FusedMatcher(gallery, v.embedder, weights)}


def headline_table(results: list[dict], k: int):
    """variants × (seen, novel) × (top-1, top-k) per method, the hash baseline once."""
    import pandas as pd

    rows = {}
    for r in results:
        methods = ("embedding", "fused") if r is not results[0] else METHODS
        for method in methods:
            name = "pHash+dHash baseline" if method == "hash" else f"{r['variant']} · {method}"
            rep = r["reports"][method]
            rows[name] = {f"{m} {tag}": rep.get(tag, {}).get(m) for tag in ("seen", "novel") for m in ("top1", f"top{k}")}
            rows[name].update({"mAP all": rep["all"]["map"], "reprint confusions": rep["confusions"],
                               "latency ms": r["cost"]["latency_ms"] if method != "hash" else None})
    return pd.DataFrame(rows).T


def open_set(result: dict, data: RunData, val: EvalSet, test: EvalSet, target_precision: float) -> dict:
    """The "unknown" decision with novel cards removed from the gallery. Their photos have no right answer, nor do
    photos whose top match is wrong (a crop that missed the card): the threshold on the fused score, from validation
    photos, rejects queries without a right answer at the target precision."""
    matcher = result["_matcher"]
    novel = {r["card_id"] for r in data.rows if r["novel"]}
    sub = matcher.gallery.subset([c for c in data.catalogue.ids if c not in novel])
    m = FusedMatcher(sub, matcher.embedder, matcher.weights)

    def top(es: EvalSet) -> tuple[np.ndarray, np.ndarray]:
        best = [q[0] for q in m.match(es.crops, 1)]
        return np.array([b.score for b in best]), np.array([b.card_id == t for b, t in zip(best, es.ids)])

    (vs, v_right), (ts, t_right) = top(val), top(test)
    t = fit_unknown_threshold(vs[v_right], vs[~v_right], target_precision)
    return open_set_report(ts, ~test.mask(True), t, t_right)


def size_curve(result: dict, data: RunData, test: EvalSet, sizes: list[int], seed: int) -> dict:
    """top-1 per method as the gallery grows with synthetic distractors (reprints and variants among them)."""
    matcher = result["_matcher"]
    extra = max(sizes) - len(data.catalogue)
    gallery = matcher.gallery.subset(matcher.gallery.card_ids)  # a copy: append works in place
    if extra > 0:
        distract = synthetic_catalogue(extra, max(1, extra // 80), 0.15, 0.15, seed=seed + 7919,
                                       card_size=data.catalogue.card_size)
        refs = {f"x-{c}": distract.image(c) for c in distract.ids}
        gallery.append(build_gallery(refs, matcher.embedder, None, model_id=gallery.model_id))
    s = FusedMatcher(gallery, matcher.embedder, matcher.weights).signals(test.crops)
    scores = {"hash": s.hash, "embedding": s.embedding, "fused": s.fused(matcher.weights)}
    return gallery_size_curve(scores, test.ids, gallery.card_ids, sizes, draws=2, seed=seed)


def release_gates(results: list[dict], ctx) -> dict:
    """Retention (student/teacher top-1), INT8 drop and parity gates, from params."""
    top1 = {r["variant"]: r["reports"]["embedding"]["all"]["top1"] for r in results}
    g = ctx.params.eval.gates
    parity = ctx.upstream("04")["metrics"].get("parity_ok")
    metrics = {"teacher_top1": top1.get("teacher"), "student_top1": top1.get("stage 2 ONNX fp32"),
               "int8_top1": top1.get("stage 2 INT8 (emulated)")}
    return gates(metrics, g.retention_min, g.int8_drop_max, parity if g.parity_required else True)


def failures(result: dict, data: RunData, test: EvalSet, n: int, method: str = "fused") -> list[tuple]:
    sc = result["_scores"][method]
    ids = result["_gallery"].card_ids
    out = []
    for i in np.flatnonzero(np.array([ids[j] for j in sc.argmax(1)]) != np.array(test.ids))[:n]:
        pred = ids[int(sc[i].argmax())]
        row = test.rows[i]
        photo = read_rgb(data.root / row["photo"]) if row.get("photo") else test.crops[i]
        out.append((photo, data.catalogue.image(pred), data.catalogue.image(row["card_id"]),
                    f"{row['card_id']} → {pred}" + (" (novel)" if row["novel"] else "")))
    return out


def match_masks(result: dict, test: EvalSet) -> np.ndarray:
    return relevance_mask(test.ids, result["_gallery"].card_ids)


def public(result: dict) -> dict:
    """The JSON-serialisable part of a variant's result."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def run_data(ctx) -> RunData:
    return RunData.load(data_root(ctx), ctx.params.data.input_size)


def stage_metrics(ctx, results: list[dict], gate_table: dict, open_set_rep: dict, curve: dict) -> dict:
    """Everything the metrics JSON holds, with the headline the run's index page opens with."""
    deployed = next(r for r in results if r["variant"] == "stage 2 ONNX fp32")
    rep = deployed["reports"]
    hailo = ctx.upstream("05")["metrics"]

    def top1(method: str, tag: str):
        return rep[method].get(tag, {}).get("top1")

    headline = {
        "student top-1, seen cards (fused)": top1("fused", "seen"),
        "student top-1, novel cards (fused)": top1("fused", "novel"),
        "student top-1, seen cards (embedding alone)": top1("embedding", "seen"),
        "student top-1, novel cards (embedding alone)": top1("embedding", "novel"),
        "pHash+dHash baseline top-1, seen / novel": f"{top1('hash', 'seen'):.3f} / {top1('hash', 'novel'):.3f}"
        if top1("hash", "novel") is not None else top1("hash", "seen"),
        "student latency (ONNX Runtime, 1 CPU thread, ms/image)": round(deployed["cost"]["latency_ms"], 2),
        "student size (MB)": deployed["cost"]["size_mb"],
        **{f"gate {k}": "PASS" if v["pass"] else "FAIL" for k, v in gate_table.items()},
        "Hailo path": hailo.get("hailo_path"),
    }
    summary = {"fused_top1_seen": top1("fused", "seen"), "fused_top1_novel": top1("fused", "novel"),
               "embedding_top1_seen": top1("embedding", "seen"), "embedding_top1_novel": top1("embedding", "novel"),
               "hash_top1_seen": top1("hash", "seen"), "hash_top1_novel": top1("hash", "novel"),
               **{f"open_set_{k}": open_set_rep.get(k) for k in ("unknown_recall", "right_rejected_rate",
                                                                  "answered_accuracy", "accuracy_without_rejection")},
               "gates_pass": all(v["pass"] for v in gate_table.values())}
    return {"run_id": ctx.run.run_id, "headline": headline, "summary": summary, "gates": gate_table,
            "variants": [public(r) for r in results], "open_set": open_set_rep, "gallery_size_curve": curve}

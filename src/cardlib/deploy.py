"""The export and Hailo stages as notebooks call them: ONNX files + parity, calibration, .alls, HEF or INT8."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from cardlib.data.build import rows_for
from cardlib.data.datasets import read_rgb
from cardlib.export import assert_parity, check_parity, export_onnx, onnx_latency
from cardlib.evaluate import evaluate_retrieval
from cardlib.gallery import OnnxEmbedder, catalogue_gallery
from cardlib.hailo import (build_calibration_set, check_compatibility, compile_command, compile_hef, hailo_available,
                           int8_agreement, model_script, quantize_int8, require_compatible, save_calibration)
from cardlib.recognize import FusedMatcher
from cardlib.train.stage import data_root, load_model
from cardlib.train.tasks import RunData

STATIC, DYNAMIC, INT8 = "student_stage2_hailo.onnx", "student_stage2.onnx", "student_stage2_int8.onnx"


@dataclass
class ExportResult:
    files: dict[str, Path]
    parity: dict[str, dict]
    latency: dict[str, dict]
    sizes_mb: dict[str, float] = field(default_factory=dict)


def crops_of(data: RunData, split: str, limit: Optional[int] = None, novel: Optional[bool] = None) -> list[np.ndarray]:
    rows = rows_for(data.rows, split, novel)[:limit]
    return [read_rgb(data.root / r["crop"]) for r in rows]


def export_student(ctx) -> ExportResult:
    """Both ONNX files of the stage-2 student (+ the teacher if asked), parity-checked on the run's real crops."""
    p, e = ctx.params, ctx.params.export
    data = RunData.load(data_root(ctx), p.data.input_size)
    pre = data.preprocess
    images = pre.batch(crops_of(data, "test", 64)).numpy()
    student = load_model(ctx, "stage2")
    size = tuple(p.data.input_size)
    out = ctx.dir / "onnx"
    files = {
        "hailo": export_onnx(student, out / STATIC, size, e.opset, dynamic_batch=False, normalize_output=False,
                             simplify=e.simplify, preprocess=pre),
        "cpu": export_onnx(student, out / DYNAMIC, size, e.opset, dynamic_batch=True, normalize_output=True,
                           simplify=e.simplify, preprocess=pre),
    }
    parity = {"hailo": check_parity(student, files["hailo"], images[:16], normalize_output=False).to_dict(),
              "cpu": check_parity(student, files["cpu"], images, normalize_output=True).to_dict()}
    if e.export_teacher:
        teacher = load_model(ctx, "teacher")
        files["teacher"] = export_onnx(teacher, out / "teacher.onnx", size, e.teacher_opset, dynamic_batch=True,
                                       normalize_output=True, simplify=e.simplify, preprocess=pre)
        parity["teacher"] = check_parity(teacher, files["teacher"], images, normalize_output=True).to_dict()
    latency = {"cpu": onnx_latency(files["cpu"], (1, 32), size), "hailo": onnx_latency(files["hailo"], (1,), size)}
    sizes = {k: round(v.stat().st_size / 2**20, 3) for k, v in files.items()}
    return ExportResult(files, parity, latency, sizes)


def parity_verdict(result: ExportResult, max_abs: float, min_cos: float) -> dict:
    """pass/fail per file; raises ParityError (failing the stage) when any file misses the thresholds."""
    from cardlib.export import ParityReport

    for name, rep in result.parity.items():
        assert_parity(ParityReport(**rep), max_abs, min_cos)
    return {name: "pass" for name in result.parity}


def publish_export(ctx, result: ExportResult) -> None:
    lay = ctx.layout
    for name, path in result.files.items():
        key = f"{lay.teacher('onnx')}/teacher.onnx" if name == "teacher" else f"{lay.stage2}/{path.name}"
        ctx.output(f"onnx_{name}", path, publish_key=key)


# ---------------------------------------------------------------- Hailo

@dataclass
class HailoResult:
    path: str  # "hef" or "int8-emulation"
    compat: dict
    calibration: Path
    alls: Path
    metrics: dict
    model_file: Path
    command: Optional[str] = None


def onnx_retrieval(onnx_path: Path, data: RunData, split: str = "test") -> dict:
    """top-1/top-5 of an ONNX variant by the embedding signal as the evaluation stage and its INT8 gate measure it
    (each crop upright and turned 180°, against every catalogue card embedded by the same file), on all, seen and
    novel photos of the split."""
    emb = OnnxEmbedder(onnx_path, data.preprocess)
    gallery = catalogue_gallery(data.catalogue, emb)
    rows = rows_for(data.rows, split)
    ids = [r["card_id"] for r in rows]
    scores = FusedMatcher(gallery, emb, method="embedding").scores([read_rgb(data.root / r["crop"]) for r in rows])
    novel = np.array([r["novel"] for r in rows], bool)
    out = {}
    for tag, m in (("all", np.ones(len(rows), bool)), ("seen", ~novel), ("novel", novel)):
        if m.any():
            r = evaluate_retrieval(scores[m], [ids[i] for i in np.flatnonzero(m)], gallery.card_ids, k=5, slice_by=())
            out[f"{split}_top1_{tag}"], out[f"{split}_top5_{tag}"] = r["top1"], r["top5"]
    return out


def hailo_stage(ctx, sdk=None) -> HailoResult:
    """Compatibility check → calibration set → .alls → HEF (with the DFC) or INT8 emulation (without it)."""
    p, h = ctx.params, ctx.params.hailo
    data = RunData.load(data_root(ctx), p.data.input_size)
    static = ctx.upstream_path("04", "onnx_hailo")
    dynamic = ctx.upstream_path("04", "onnx_cpu")
    compat = check_compatibility(static)
    require_compatible(compat)  # a clear refusal, naming the nodes, before anything is compiled

    train = crops_of(data, "train")
    n = min(h.calib_size, len(train))
    calib = build_calibration_set(train, data.preprocess, n)
    calib_path = save_calibration(calib, ctx.dir / f"calibration_{calib.shape[1]}x{calib.shape[2]}_{n}.npy")
    alls = ctx.dir / "student_stage2.alls"
    alls.write_text(model_script(data.preprocess, h.hw_arch, h.optimization_level, h.compression_level,
                                 calib_batch_size=min(8, n), calibset_size=n))
    fp32 = onnx_retrieval(dynamic, data)
    test = data.preprocess.batch(crops_of(data, "test", 128)).numpy()
    out_dir = ctx.dir / "hailo"
    if sdk is not None or hailo_available():
        hef = compile_hef(static, calib_path, alls.read_text(), h.hw_arch, out_dir, sdk=sdk,
                          emulate_nhwc_uint8=data.preprocess.to_uint8_nhwc(crops_of(data, "test", 128)))
        metrics = {"hailo_path": "hef", "hw_arch": h.hw_arch, **{f"fp32_{k}": v for k, v in fp32.items()}}
        return HailoResult("hef", _compat_dict(compat), calib_path, alls, metrics, hef.hef_path)
    int8 = quantize_int8(dynamic, calib, data.preprocess, out_dir / INT8)
    q = onnx_retrieval(int8, data)
    agree = int8_agreement(dynamic, int8, test)
    metrics = {"hailo_path": "int8-emulation", "hw_arch": h.hw_arch, "calibration_images": n,
               **{f"fp32_{k}": v for k, v in fp32.items()}, **{f"int8_{k}": v for k, v in q.items()},
               "int8_mean_cos": agree["mean_cos"], "int8_min_cos": agree["min_cos"]}
    for tag in ("all", "seen", "novel"):
        if f"fp32_test_top1_{tag}" in metrics:
            metrics[f"int8_top1_drop_{tag}"] = metrics[f"fp32_test_top1_{tag}"] - metrics[f"int8_test_top1_{tag}"]
    hef_dir = f"models/efficientnet-hailo/{h.version}"
    cmd = compile_command(f"{STATIC}", calib_path.name, alls.name, h.hw_arch, hef_dir)
    return HailoResult("int8-emulation", _compat_dict(compat), calib_path, alls, metrics, int8, cmd)


def _compat_dict(report) -> dict:
    return {"ok": report.ok, "input_shape": list(report.input_shape), "problems": [list(p) for p in report.problems],
            "op_counts": dict(report.op_counts)}


def publish_hailo(ctx, result: HailoResult) -> None:
    lay = ctx.layout
    ctx.output("calibration", result.calibration, publish_key=f"{lay.calibration}/{result.calibration.name}")
    ctx.output("alls", result.alls, publish_key=f"{lay.hailo}/{result.alls.name}")
    name = "hef" if result.path == "hef" else "int8_onnx"
    ctx.output(name, result.model_file, publish_key=f"{lay.hailo}/{result.model_file.name}")
    summary = ctx.dir / "hailo_summary.json"
    summary.write_text(json.dumps({"path": result.path, "compat": result.compat, "metrics": result.metrics,
                                   "compile_command": result.command}, indent=2))
    ctx.output("hailo_summary", summary, publish_key=f"{lay.hailo}/hailo_summary.json")

"""Inference latency/throughput of the student (and tiny teacher): torch eager vs ONNX Runtime fp32 vs int8, on CPU.

Run: OMP_NUM_THREADS=1 python benchmarks/inference_latency.py  → benchmarks/results/inference_latency.json
Random-init weights: speed does not depend on them, but INT8 agreement does, so it is reported twice — at init
(BatchNorm = identity, embeddings of different cards nearly collinear) and with BatchNorm statistics matched to the
card crops (a chaotic random net: a pessimistic bound). The trained student's number comes from the notebook.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from cardlib.data.camera import simulate_crop  # noqa: E402
from cardlib.data.catalogue import synthetic_catalogue  # noqa: E402
from cardlib.export import assert_parity, check_parity, export_onnx, onnx_embed, onnx_latency  # noqa: E402
from cardlib.hailo import check_compatibility, int8_agreement, quantize_int8  # noqa: E402
from cardlib.models.student import build_student  # noqa: E402
from cardlib.preprocess import Preprocess  # noqa: E402

BATCHES = (1, 32)
RUNS = {1: 30, 32: 5}  # timed repetitions per batch size (median reported)
EMBED_DIM = 256  # params.model.embed_dim default
N_CALIB, N_EVAL = 32, 16
TEACHER_OPSET = 17  # attention (scaled_dot_product_attention) needs opset >= 14; the teacher never goes to Hailo


def forward_gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward GFLOPs per image (FlopCounterMode counts a multiply-add as 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x[:1])
    return counter.get_total_flops() / 1e9


def torch_latency(model: torch.nn.Module, shape: tuple[int, int]) -> dict:
    out = {}
    for bs in BATCHES:
        x = torch.randn(bs, 3, *shape)
        with torch.no_grad():
            for _ in range(2):
                model(x)
            times = []
            for _ in range(RUNS[bs]):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        ms = float(np.median(times) * 1000)
        out[str(bs)] = {"ms_per_batch": ms, "ms_per_image": ms / bs, "images_per_s": bs * 1000 / ms, "runs": RUNS[bs]}
    return out


def ort_latency(path: Path, shape: tuple[int, int]) -> dict:
    out = {}
    for bs in BATCHES:
        out.update(onnx_latency(path, batch_sizes=(bs,), input_size=shape, runs=RUNS[bs], warmup=2))
    return out


def with_gflops_per_s(latency: dict, gflops: float) -> dict:
    for entry in latency.values():
        if "images_per_s" in entry:
            entry["achieved_gflop_per_s"] = gflops * entry["images_per_s"]
    return latency


def card_crops(pre: Preprocess) -> np.ndarray:
    cat = synthetic_catalogue((N_CALIB + N_EVAL) // 2, 3, seed=0, card_size=(224, 160))
    crops = []
    for i, cid in enumerate(cat.ids):
        img = cat.image(cid)
        crops += [pre.resize_uint8(img), simulate_crop(img, seed=i, difficulty=0.5)[0]]
    return pre.to_uint8_nhwc(crops)


def matched_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Copy of `model` whose BatchNorm running statistics are exactly those of `x` (as after training on such data)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass gives the exact statistics
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def int8_study(model, pre, u8, tmp: Path, tag: str) -> dict:
    path = export_onnx(model, tmp / f"{tag}_hailo.onnx", (pre.height, pre.width), dynamic_batch=False,
                       normalize_output=False, preprocess=pre)
    t0 = time.perf_counter()
    q = quantize_int8(path, u8[:N_CALIB], pre, tmp / f"{tag}_int8.onnx")
    seconds = time.perf_counter() - t0
    held_out = pre.normalize(u8[N_CALIB:])
    fp32, int8 = onnx_embed(path, held_out), onnx_embed(q, held_out)
    sim = fp32 @ fp32.T
    off_diag = sim[~np.eye(len(sim), dtype=bool)]
    return {**int8_agreement(path, q, held_out), "quantize_s": seconds,
            "self_retrieval_top1": float(((int8 @ fp32.T).argmax(1) == np.arange(len(fp32))).mean()),
            "fp32_inter_card_cos_mean": float(off_diag.mean()), "fp32_inter_card_cos_max": float(off_diag.max())}


def bench_student(pre: Preprocess, u8: np.ndarray, tmp: Path) -> dict:
    shape = (pre.height, pre.width)
    model = build_student(EMBED_DIM).eval()
    x = torch.from_numpy(pre.normalize(u8))
    gflops = forward_gflops(model, x)
    res = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "gflops_per_image": gflops, "export_s": {}}
    paths = {}
    for name, dynamic, normed in (("hailo", False, False), ("cpu", True, True)):
        t0 = time.perf_counter()
        paths[name] = export_onnx(model, tmp / f"student_{name}.onnx", shape, dynamic_batch=dynamic,
                                  normalize_output=normed, preprocess=pre)
        res["export_s"][name] = time.perf_counter() - t0
        res.setdefault("parity", {})[name] = assert_parity(check_parity(model, paths[name], x[:16], normed),
                                                           max_abs=1e-4, min_cos=0.9999).to_dict()
    compat = check_compatibility(paths["hailo"])
    res["hailo_compat"] = {"ok": compat.ok, "problems": compat.problems, "op_counts": compat.op_counts}
    t0 = time.perf_counter()
    int8_cpu = quantize_int8(paths["cpu"], u8[:N_CALIB], pre, tmp / "student_cpu_int8.onnx")
    res["int8_quantize_s"] = time.perf_counter() - t0
    res["torch_eager"] = with_gflops_per_s(torch_latency(model, shape), gflops)
    res["onnx_fp32"] = with_gflops_per_s(ort_latency(paths["cpu"], shape), gflops)
    res["onnx_int8"] = with_gflops_per_s(ort_latency(int8_cpu, shape), gflops)
    res["int8_vs_fp32"] = {"random_init": int8_study(model, pre, u8, tmp, "init"),
                           "bn_matched_to_crops": int8_study(matched_batchnorm(model, x[:N_CALIB]), pre, u8, tmp, "bn")}
    return res


def bench_teacher(pre: Preprocess, tmp: Path) -> dict:
    from cardlib.models.teacher import build_teacher

    shape = (pre.height, pre.width)
    model = build_teacher("dinov3-tiny", EMBED_DIM, image_size=shape).eval()
    x = torch.randn(1, 3, *shape)
    gflops = forward_gflops(model, x)
    res = {"preset": "dinov3-tiny", "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "gflops_per_image": gflops, "torch_eager": with_gflops_per_s(torch_latency(model, shape), gflops)}
    try:  # the teacher always ends in L2 normalisation, so it is wrapped for the export's `normalize` switch
        wrapped = _AlwaysNormalized(model)
        t0 = time.perf_counter()
        path = export_onnx(wrapped, tmp / "teacher.onnx", shape, TEACHER_OPSET, dynamic_batch=True,
                           normalize_output=True, preprocess=pre)
        res["export_s"] = time.perf_counter() - t0
        res["onnx_fp32"] = with_gflops_per_s(ort_latency(path, shape), gflops)
        static = export_onnx(wrapped, tmp / "teacher_static.onnx", shape, TEACHER_OPSET, dynamic_batch=False,
                             normalize_output=True, preprocess=pre)
        compat = check_compatibility(static)
        res["hailo_compat"] = {"ok": compat.ok, "n_problems": len(compat.problems),
                               "refused_ops": sorted({op for _, op, _ in compat.problems})}
    except Exception as exc:  # recorded in the JSON: the teacher is optional in this benchmark
        res["onnx_error"] = f"{type(exc).__name__}: {exc}"
    return res


class _AlwaysNormalized(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.normalize = model, True

    def forward(self, x):
        return self.model(x)


def main(out_path: Path) -> dict:
    threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    pre = Preprocess()
    u8 = card_crops(pre)
    result = {"env": {"torch": torch.__version__, "onnxruntime": ort.__version__, "threads": threads,
                      "cpu": platform.processor() or platform.machine(), "loadavg_1m_start": os.getloadavg()[0]},
              "input_nchw": [1, 3, pre.height, pre.width], "batch_sizes": list(BATCHES)}
    with tempfile.TemporaryDirectory() as tmp:
        result["student"] = bench_student(pre, u8, Path(tmp))
        result["teacher"] = bench_teacher(pre, Path(tmp))
    result["env"]["loadavg_1m_end"] = os.getloadavg()[0]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    out = main(Path(__file__).resolve().parent / "results" / "inference_latency.json")
    s = out["student"]
    print(json.dumps({k: s[k] for k in ("export_s", "parity", "int8_vs_fp32")}, indent=1, default=float))
    for kind in ("torch_eager", "onnx_fp32", "onnx_int8"):
        print(kind, {b: round(v.get("ms_per_image", float("nan")), 2) for b, v in s[kind].items()}, "ms/image")

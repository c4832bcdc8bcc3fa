"""ONNX export of the embedding student (Hailo file and CPU-serving file), PyTorch parity and ORT latency."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from cardlib import __version__
from cardlib.store import atomic_write_bytes
from cardlib.preprocess import Preprocess

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


class ParityError(AssertionError):
    """The exported graph disagrees with the PyTorch model beyond the allowed tolerance."""


@dataclass(frozen=True)
class ParityReport:
    max_abs: float
    min_cos: float
    mean_cos: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


class _UnnormalizedView(nn.Module):
    """Adapter for models exposing `embed_unnormalized(x)` but no `normalize` switch."""

    def __init__(self, model: nn.Module, normalize_output: bool):
        super().__init__()
        self.model = model
        self.normalize_output = normalize_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model.embed_unnormalized(x)
        return F.normalize(z, dim=-1) if self.normalize_output else z


@contextlib.contextmanager
def embedding_view(model: nn.Module, normalize_output: bool):
    """Yield `model` in eval mode emitting L2-normalised (or raw projection) embeddings; restore it afterwards."""
    was_training = model.training
    model.eval()
    try:
        if hasattr(model, "normalize"):
            before = model.normalize
            model.normalize = normalize_output
            try:
                yield model
            finally:
                model.normalize = before
        elif hasattr(model, "embed_unnormalized"):
            yield _UnnormalizedView(model, normalize_output)
        else:
            raise TypeError(
                f"{type(model).__name__} has neither a `normalize` switch nor `embed_unnormalized(x)`; "
                "cannot choose whether the exported graph ends before or after L2 normalisation"
            )
    finally:
        model.train(was_training)


def _simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Run onnx-simplifier; on failure return the input graph and the reason (the caller records it)."""
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises many types across versions; any failure means "keep the original"
        return model, f"onnxsim raised {type(exc).__name__}: {exc}"
    if not ok:
        return model, "onnxsim's numerical check of the simplified graph failed"
    try:
        onnx.checker.check_model(simplified)
    except onnx.checker.ValidationError as exc:
        return model, f"simplified graph fails onnx.checker: {exc}"
    return simplified, None


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int] = (160, 112),
    opset: int = 13,
    *,
    dynamic_batch: bool,
    normalize_output: bool,
    simplify: bool = True,
    preprocess: Preprocess | None = None,
) -> Path:
    """Export float NCHW → embedding to ONNX (legacy exporter), check it, simplify it and write it atomically."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX path must end in .onnx, got {path.name!r}")
    height, width = (int(v) for v in input_size)
    preprocess = preprocess or Preprocess(height=height, width=width)
    if (preprocess.height, preprocess.width) != (height, width):
        raise ValueError(f"input_size {input_size} disagrees with the preprocessing contract {preprocess.height}x{preprocess.width}")
    dummy = torch.zeros(1, 3, height, width)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with embedding_view(model, normalize_output) as view, tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)  # the legacy exporter warns that it is legacy
            torch.onnx.export(
                view, (dummy,), str(raw), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, do_constant_folding=True,
            )
        graph = onnx.load(str(raw))
    onnx.checker.check_model(graph)
    simplify_note = "not requested"
    if simplify:
        graph, failure = _simplify(graph)
        if failure:
            warnings.warn(f"ONNX simplification skipped for {path.name}: {failure}", RuntimeWarning, stacklevel=2)
            simplify_note = f"failed, unsimplified graph kept: {failure}"
        else:
            simplify_note = "ok"
    meta = {
        "normalized": "true" if normalize_output else "false",
        "input_height": str(height),
        "input_width": str(width),
        "dynamic_batch": "true" if dynamic_batch else "false",
        "preprocess": json.dumps(preprocess.to_dict()),
        "simplify": simplify_note,
        "producer": f"cardlib {__version__}",
    }
    del graph.metadata_props[:]
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(graph)
    atomic_write_bytes(path, graph.SerializeToString())
    return path


def onnx_metadata(onnx_path_or_session) -> dict[str, str]:
    """The metadata_props that `export_onnx` wrote (normalized, input size, preprocess JSON, simplify note)."""
    if isinstance(onnx_path_or_session, ort.InferenceSession):
        return dict(onnx_path_or_session.get_modelmeta().custom_metadata_map)
    graph = onnx.load(str(onnx_path_or_session), load_external_data=False)
    return {p.key: p.value for p in graph.metadata_props}


def is_quantized(onnx_path: str | os.PathLike) -> bool:
    """Whether a graph holds quantisation (QuantizeLinear/DequantizeLinear) nodes: an INT8 emulation."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def ort_session(onnx_path: str | os.PathLike, threads: int | None = None) -> ort.InferenceSession:
    """CPU ONNX Runtime session; threads defaults to $OMP_NUM_THREADS because ORT ignores that variable itself."""
    opts = ort.SessionOptions()
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if is_quantized(onnx_path):
        # run the INT8 (QDQ) graph as written: fused into ORT's x86 U8S8 kernels, uint8 x int8 products are summed
        # in pairs in 16 bits and saturate on CPUs without VNNI, which the accelerator's integer arithmetic does not
        # (one run's student: 1st-percentile cosine to fp32 0.60 fused against 0.998 as written; 2.5 points of top-1)
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


def _run_batched(session: ort.InferenceSession, nchw: np.ndarray) -> np.ndarray:
    inp = session.get_inputs()[0]
    x = np.ascontiguousarray(nchw, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected float NCHW (N,3,H,W), got shape {x.shape}")
    static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    if static_batch is None or static_batch == x.shape[0]:
        return session.run(None, {inp.name: x})[0]
    if x.shape[0] % static_batch:
        raise ValueError(f"graph has static batch {static_batch}; cannot split {x.shape[0]} images into it")
    chunks = [session.run(None, {inp.name: x[i : i + static_batch]})[0] for i in range(0, len(x), static_batch)]
    return np.concatenate(chunks)


def onnx_embed(onnx_path_or_session, nchw_float: np.ndarray) -> np.ndarray:
    """Embed float NCHW images with an exported file; L2-normalises on the host when the graph ends before it."""
    session = onnx_path_or_session
    if not isinstance(session, ort.InferenceSession):
        session = ort_session(onnx_path_or_session)
    out = _run_batched(session, nchw_float).reshape(len(nchw_float), -1)
    # L2 normalisation is idempotent, so a file without our metadata is normalised too rather than guessed about
    if onnx_metadata(session).get("normalized") != "true":
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(axis=1) / den


def check_parity(model: nn.Module, onnx_path, images_nchw, normalize_output: bool) -> ParityReport:
    """Compare the exported graph's raw output with PyTorch's on the given float NCHW images."""
    x = torch.as_tensor(np.asarray(images_nchw, dtype=np.float32))
    with embedding_view(model, normalize_output) as view, torch.no_grad():
        expected = view(x).reshape(len(x), -1).numpy()
    session = onnx_path if isinstance(onnx_path, ort.InferenceSession) else ort_session(onnx_path)
    got = _run_batched(session, x.numpy()).reshape(len(x), -1)
    if got.shape != expected.shape:
        raise ParityError(f"ONNX output shape {got.shape} != PyTorch output shape {expected.shape}")
    cos = cosine_rows(expected, got)
    return ParityReport(
        max_abs=float(np.abs(expected - got).max()), min_cos=float(cos.min()), mean_cos=float(cos.mean()), n=len(x)
    )


def assert_parity(report: ParityReport, max_abs: float, min_cos: float) -> ParityReport:
    """Raise ParityError naming every violated threshold; return the report when it passes."""
    failures = []
    if not report.max_abs <= max_abs:  # `not <=` also catches NaN
        failures.append(f"max |torch - onnx| = {report.max_abs:.3g} > allowed {max_abs:.3g}")
    if not report.min_cos >= min_cos:
        failures.append(f"min cosine = {report.min_cos:.6f} < required {min_cos:.6f}")
    if failures:
        raise ParityError(f"ONNX parity failed on {report.n} images: " + "; ".join(failures))
    return report


def onnx_latency(
    onnx_path,
    batch_sizes=(1, 32),
    input_size: tuple[int, int] = (160, 112),
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> dict:
    """ORT CPU latency per batch size: median ms per batch, ms per image, images/s (static-batch graphs skip other sizes)."""
    session = ort_session(onnx_path, threads=threads)
    inp = session.get_inputs()[0]
    static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    rng = np.random.default_rng(0)
    results: dict = {}
    for bs in batch_sizes:
        if static_batch is not None and bs != static_batch:
            results[str(bs)] = {"skipped": f"graph has static batch {static_batch}"}
            continue
        x = rng.standard_normal((bs, 3, *input_size)).astype(np.float32)
        for _ in range(warmup):
            session.run(None, {inp.name: x})
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(None, {inp.name: x})
            times.append(time.perf_counter() - t0)
        ms = float(np.median(times) * 1000)
        results[str(bs)] = {"ms_per_batch": ms, "ms_per_image": ms / bs, "images_per_s": bs * 1000.0 / ms, "runs": runs}
    return results

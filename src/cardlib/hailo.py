"""Hailo-8 path: op compatibility, calibration set, .alls model script, DFC compile adapter, INT8 emulation with ORT."""
from __future__ import annotations

import importlib
import importlib.util
import io
import os
import re
import shlex
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from cardlib.export import cosine_rows, onnx_embed, onnx_metadata
from cardlib.store import atomic_write_bytes
from cardlib.preprocess import Preprocess

# Conservative allow-list of ONNX ops the Dataflow Compiler translates for CNNs (static shapes only).
HAILO_SUPPORTED_OPS = frozenset({
    "Conv", "ConvTranspose", "BatchNormalization", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid",
    "HardSigmoid", "HardSwish", "Tanh", "Add", "Sub", "Mul", "Div", "GlobalAveragePool", "GlobalMaxPool",
    "AveragePool", "MaxPool", "Concat", "Gemm", "MatMul", "Flatten", "Reshape", "Pad", "Resize", "Transpose",
    "Squeeze", "Unsqueeze", "Softmax", "ReduceMean", "ReduceMax", "Slice", "Split", "DepthToSpace",
    "SpaceToDepth", "Constant", "Identity", "Dropout",
})
# Ops refused outright, with the reason shown to the user.
REFUSED_OPS = {
    "Gather": "data-dependent index lookup (embedding tables, tensor indexing) has no dataflow mapping on Hailo-8",
    "GatherElements": "data-dependent index lookup has no dataflow mapping on Hailo-8",
    "Erf": "exact-GELU building block; Hailo-8 only has a fixed set of piecewise activations — use ReLU/ReLU6/HardSwish",
    "Gelu": "transformer activation outside Hailo-8's activation set — use ReLU/ReLU6/HardSwish in the student",
    "LayerNormalization": "per-sample mean/variance over channels needs runtime reductions and division; unlike "
    "BatchNorm it cannot be folded into the preceding conv",
    "Loop": "control flow: a HEF is a static dataflow graph",
    "If": "control flow: a HEF is a static dataflow graph",
    "Scan": "control flow: a HEF is a static dataflow graph",
    "NonZero": "output shape depends on the data (dynamic shape)",
    "Shape": "runtime shape computation (dynamic shapes); export with static shapes and simplify",
    "ConstantOfShape": "runtime shape computation (dynamic shapes)",
    "Expand": "runtime broadcast to a computed shape (dynamic shapes)",
    "Range": "runtime-sized tensor (dynamic shapes)",
    "TopK": "data-dependent selection and sort",
    "Where": "data-dependent select",
}
HW_ARCHS = ("hailo8", "hailo8l", "hailo8r", "hailo10h", "hailo15h", "hailo15m")
_NET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


class HailoCompatError(ValueError):
    """The ONNX graph cannot be compiled for Hailo-8 as it stands."""


class HailoUnavailableError(RuntimeError):
    """The Hailo Dataflow Compiler (hailo_sdk_client) is not installed on this machine."""


@dataclass
class CompatReport:
    ok: bool
    problems: list[tuple[str, str, str]]  # (node or tensor name, op type, reason)
    input_shape: tuple
    op_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        head = f"Hailo compatibility: {'OK' if self.ok else f'{len(self.problems)} problem(s)'}; input {self.input_shape}"
        return "\n".join([head] + [f"  - {name} [{op}]: {why}" for name, op, why in self.problems])


def _dims(value_info) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim)


def check_compatibility(onnx_path) -> CompatReport:
    """Flag unsupported ops (by node name), dynamic dims, non-NCHW inputs and batch ≠ 1 before any compile."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    problems: list[tuple[str, str, str]] = []
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        problems.append(("<graph>", "input", f"expected exactly one image input, found {len(inputs)}"))
    input_shape = _dims(inputs[0]) if inputs else ()
    for vi in inputs + list(graph.output):
        for axis, d in enumerate(_dims(vi)):
            if not isinstance(d, int) or d <= 0:
                problems.append((vi.name, "shape", f"dynamic dimension {d!r} at axis {axis}; Hailo needs static shapes"))
    if inputs:
        if len(input_shape) != 4:
            problems.append((inputs[0].name, "input", f"input is {len(input_shape)}-D {input_shape}, expected 4-D NCHW"))
        else:
            if input_shape[0] != 1:
                problems.append((inputs[0].name, "input", f"batch is {input_shape[0]!r}; the Hailo file must have batch 1"))
            if input_shape[1] != 3:
                problems.append((inputs[0].name, "input", f"channel axis 1 is {input_shape[1]!r}, expected 3 (RGB NCHW)"))
    for i, node in enumerate(graph.node):
        name = node.name or f"<{node.op_type}#{i}>"
        if node.domain not in ("", "ai.onnx"):
            problems.append((name, node.op_type, f"custom-domain op ({node.domain}) is not translated by the DFC"))
        elif node.op_type in REFUSED_OPS:
            problems.append((name, node.op_type, REFUSED_OPS[node.op_type]))
        elif node.op_type not in HAILO_SUPPORTED_OPS:
            problems.append((name, node.op_type, "not in the Hailo allow-list for CNN layers"))
        elif node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] not in constants:
            problems.append((name, node.op_type, "target shape is computed at runtime (dynamic shape)"))
        elif node.op_type == "Div" and len(node.input) > 1 and node.input[1] not in constants:
            problems.append((name, node.op_type, "division by a runtime tensor; only division by a constant maps"))
    counts = dict(Counter(n.op_type for n in graph.node))
    return CompatReport(ok=not problems, problems=problems, input_shape=input_shape, op_counts=counts)


def require_compatible(report: CompatReport) -> CompatReport:
    """Raise HailoCompatError listing every problem; return the report when the graph is compatible."""
    if not report.ok:
        raise HailoCompatError(report.summary())
    return report


def build_calibration_set(crops_uint8_list, preprocess: Preprocess, n: int) -> np.ndarray:
    """Up to n crops, evenly spaced over the list (covers its variety), as uint8 NHWC (N, H, W, 3)."""
    crops = list(crops_uint8_list)
    if not crops:
        raise ValueError("no crops given for the calibration set")
    if n < 1:
        raise ValueError(f"calibration size must be ≥ 1, got {n}")
    if len(crops) < n:
        warnings.warn(f"calibration set has {len(crops)} crops, fewer than the {n} requested", RuntimeWarning, stacklevel=2)
    idx = np.unique(np.linspace(0, len(crops) - 1, num=min(n, len(crops))).round().astype(int))
    return preprocess.to_uint8_nhwc([crops[i] for i in idx])


def _validate_calibration(arr: np.ndarray, hw: tuple[int, int] | None = None) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3 or len(arr) == 0:
        raise ValueError(f"calibration must be non-empty uint8 NHWC (N,H,W,3), got {arr.dtype} {arr.shape}")
    if hw is not None and tuple(arr.shape[1:3]) != tuple(hw):
        raise ValueError(f"calibration images are {arr.shape[1:3]}, the model input is {hw}")
    return arr


def save_calibration(arr: np.ndarray, path) -> Path:
    """Write the uint8 NHWC calibration array as .npy, atomically."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"calibration path must end in .npy, got {path.name!r}")
    buf = io.BytesIO()
    np.save(buf, _validate_calibration(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    return path


def model_script(
    preprocess: Preprocess,
    hw_arch: str,
    optimization_level: int,
    compression_level: int,
    calib_batch_size: int = 8,
    calibset_size: int | None = None,
) -> str:
    """Hailo .alls model script: on-chip normalisation from the preprocessing contract + optimisation settings."""
    if hw_arch not in HW_ARCHS:
        raise ValueError(f"hw_arch {hw_arch!r} is not one of {HW_ARCHS}")
    if not 0 <= optimization_level <= 4 or not 0 <= compression_level <= 5:
        raise ValueError(f"optimization_level must be 0..4 and compression_level 0..5, got {optimization_level}, {compression_level}")
    if calib_batch_size < 1 or (calibset_size is not None and calibset_size < calib_batch_size):
        raise ValueError(f"need calib_batch_size ≥ 1 and calibset_size ≥ calib_batch_size, got {calib_batch_size}, {calibset_size}")
    mean, std = preprocess.hailo_normalization()
    calib = f"model_optimization_config(calibration, batch_size={calib_batch_size}"
    calib += f", calibset_size={calibset_size})" if calibset_size is not None else ")"
    return "\n".join([
        # the device receives uint8 RGB; this layer does (x - mean*255) / (std*255) on-chip, exactly like Preprocess
        f"normalization1 = normalization({mean}, {std})",
        f"model_optimization_flavor(optimization_level={optimization_level}, compression_level={compression_level})",
        calib,
        "performance_param(compiler_optimization_level=max)",
    ]) + "\n"


@dataclass
class HefResult:
    hef_path: Path
    har_path: Path
    net_name: str
    hw_arch: str
    seconds: float
    emulated_embeddings: np.ndarray | None = None  # L2-normalised, from the quantised emulator


def hailo_available() -> bool:
    """True when the Hailo Dataflow Compiler's Python package is importable here."""
    return importlib.util.find_spec("hailo_sdk_client") is not None


def compile_command(onnx: str, calib: str, alls: str, hw_arch: str, out: str) -> str:
    """The command line to run `compile_hef` on a machine that has the Dataflow Compiler."""
    return shlex.join(["cardlib", "hailo", "compile", "--onnx", str(onnx), "--calib", str(calib), "--alls", str(alls),
                       "--hw-arch", hw_arch, "--out", str(out)])


def _graph_io(onnx_path) -> tuple[str, list, str]:
    """(image input name, its dims, name of the node producing the first output)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inp = next(i for i in graph.input if i.name not in {t.name for t in graph.initializer})
    out_name = graph.output[0].name
    return inp.name, list(_dims(inp)), next(n.name for n in graph.node if out_name in n.output)


def compile_hef(onnx_path, calib_npy, alls_text: str, hw_arch: str, out_dir, sdk=None, *,
                net_name: str = "cardlib_student", emulate_nhwc_uint8: np.ndarray | None = None) -> HefResult:
    """translate → load_model_script → optimize → (quantised emulation) → compile, writing <net_name>.hef."""
    if not _NET_NAME.match(net_name):
        raise ValueError(f"net_name {net_name!r} must match {_NET_NAME.pattern} (it becomes a file name)")
    if hw_arch not in HW_ARCHS:
        raise ValueError(f"hw_arch {hw_arch!r} is not one of {HW_ARCHS}")
    require_compatible(check_compatibility(onnx_path))
    if sdk is None:
        if not hailo_available():
            raise HailoUnavailableError("hailo_sdk_client (Hailo Dataflow Compiler) is not installed; on a DFC machine run: "
                                        + compile_command(onnx_path, calib_npy, "<model.alls>", hw_arch, out_dir))
        sdk = importlib.import_module("hailo_sdk_client")
    input_name, input_shape, end_node = _graph_io(onnx_path)
    calib = np.load(calib_npy, allow_pickle=False) if isinstance(calib_npy, (str, os.PathLike)) else calib_npy
    calib = _validate_calibration(calib, hw=tuple(input_shape[2:]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runner = sdk.ClientRunner(hw_arch=hw_arch)
    runner.translate_onnx_model(str(onnx_path), net_name, start_node_names=[input_name], end_node_names=[end_node],
                                net_input_shapes={input_name: input_shape})
    runner.load_model_script(alls_text)
    # the normalization layer in the script expects pixels in 0..255, NHWC, as the device will receive them
    runner.optimize(calib.astype(np.float32))
    har_path = out_dir / f"{net_name}_quantized.har"
    runner.save_har(str(har_path))
    emulated = None
    if emulate_nhwc_uint8 is not None:
        images = _validate_calibration(emulate_nhwc_uint8, hw=tuple(input_shape[2:])).astype(np.float32)
        with runner.infer_context(sdk.InferenceContext.SDK_QUANTIZED) as ctx:
            raw = np.asarray(runner.infer(ctx, images), dtype=np.float32).reshape(len(images), -1)
        emulated = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)  # the HEF ends before L2
    hef = runner.compile()
    if not isinstance(hef, (bytes, bytearray)) or not hef:
        raise RuntimeError(f"ClientRunner.compile() returned {type(hef).__name__}, expected non-empty HEF bytes")
    hef_path = out_dir / f"{net_name}.hef"
    atomic_write_bytes(hef_path, bytes(hef))
    return HefResult(hef_path, har_path, net_name, hw_arch, time.perf_counter() - t0, emulated)


def add_compile_arguments(parser) -> None:
    """Register the `cardlib hailo compile` arguments on an argparse parser."""
    parser.add_argument("--onnx", required=True, help="static batch-1 ONNX ending before L2 normalisation")
    parser.add_argument("--calib", required=True, help="uint8 NHWC calibration .npy")
    parser.add_argument("--alls", required=True, help="Hailo model script (.alls)")
    parser.add_argument("--hw-arch", dest="hw_arch", default="hailo8", choices=HW_ARCHS)
    parser.add_argument("--out", required=True, help="output folder for the .har and .hef")
    parser.add_argument("--net-name", dest="net_name", default="cardlib_student")


def cli_compile(args, sdk=None) -> HefResult:
    """Entry point for `cardlib hailo compile` (args from `add_compile_arguments`)."""
    result = compile_hef(args.onnx, args.calib, Path(args.alls).read_text(), args.hw_arch, args.out, sdk=sdk,
                         net_name=getattr(args, "net_name", "cardlib_student"))
    print(f"wrote {result.hef_path} ({result.hef_path.stat().st_size} bytes) in {result.seconds:.0f} s")
    return result


class _CalibrationReader:
    """ORT CalibrationDataReader over the normalised calibration set, in batches the graph accepts."""

    def __init__(self, input_name: str, nchw: np.ndarray, batch: int):
        self._batches = iter([{input_name: nchw[i : i + batch]} for i in range(0, len(nchw), batch)])

    def get_next(self):
        return next(self._batches, None)


def quantize_int8(onnx_fp32_path, calib_nhwc_uint8: np.ndarray, preprocess: Preprocess, out_path) -> Path:
    """INT8 emulation: ORT static QDQ quantisation (uint8 activations, per-channel int8 weights) on the calibration set."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    input_name, input_shape, _ = _graph_io(onnx_fp32_path)
    calib = _validate_calibration(calib_nhwc_uint8, hw=(preprocess.height, preprocess.width))
    nchw = preprocess.normalize(calib)
    batch = input_shape[0] if isinstance(input_shape[0], int) and input_shape[0] > 0 else 16
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # shape inference + graph cleanup so every Conv/Gemm gets its QDQ pair and per-channel scales
        quant_pre_process(str(onnx_fp32_path), str(prepared), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(quantized), _CalibrationReader(input_name, nchw, batch),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(quantized))
    meta = {**onnx_metadata(onnx_fp32_path), "quantization": f"ORT static QDQ, act QUInt8, weights QInt8 per-channel, "
            f"MinMax over {len(calib)} calibration images"}
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def int8_agreement(fp32_path, int8_path, nchw: np.ndarray) -> dict:
    """Cosine agreement of INT8 vs fp32 embeddings on the same float NCHW images."""
    cos = cosine_rows(onnx_embed(fp32_path, nchw), onnx_embed(int8_path, nchw))
    return {"mean_cos": float(cos.mean()), "min_cos": float(cos.min()), "n": int(len(cos))}

"""ONNX export parity, Hailo compatibility, calibration, .alls, DFC adapter call sequence and INT8 emulation."""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import types

import numpy as np
import onnx
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from cardlib.data.camera import simulate_crop
from cardlib.data.catalogue import synthetic_catalogue
from cardlib.export import (
    ParityError, assert_parity, check_parity, cosine_rows, export_onnx, onnx_embed, onnx_latency, onnx_metadata,
    ort_session,
)
from cardlib.hailo import (
    HailoCompatError, HailoUnavailableError, add_compile_arguments, build_calibration_set, check_compatibility,
    cli_compile, compile_command, compile_hef, hailo_available, int8_agreement, model_script, quantize_int8,
    require_compatible, save_calibration,
)
from cardlib.preprocess import Preprocess

PP = Preprocess()
# the tests call the legacy exporter directly for tiny foreign models; its deprecation notice is expected
pytestmark = [pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")]


class _Student(nn.Module):
    """Student shape: efficientnet_lite0 trunk + 1280→64 projection, with the agreed `normalize` switch."""

    def __init__(self):
        super().__init__()
        self.backbone = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
        self.proj = nn.Linear(1280, 64)
        self.normalize = True

    def forward(self, x):
        z = self.proj(self.backbone(x))
        return F.normalize(z, dim=-1) if self.normalize else z


@pytest.fixture(scope="module")
def crops():
    """Rendered card crops: clean references and simulated finder crops (texture, text, glare)."""
    cat = synthetic_catalogue(24, 3, seed=0, card_size=(224, 160))
    out = []
    for i, cid in enumerate(cat.ids):
        img = cat.image(cid)
        out += [PP.resize_uint8(img), simulate_crop(img, seed=i, difficulty=0.5)[0]]
    return out


@pytest.fixture(scope="module")
def student():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return _Student().eval()


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    hailo = export_onnx(student, d / "student_hailo.onnx", dynamic_batch=False, normalize_output=False)
    cpu = export_onnx(student, d / "student_cpu.onnx", dynamic_batch=True, normalize_output=True)
    return hailo, cpu


def test_both_files_match_pytorch(student, exported, crops):
    hailo, cpu = exported
    x = PP.normalize(PP.to_uint8_nhwc(crops[:8]))
    for path, normed in ((hailo, False), (cpu, True)):
        report = assert_parity(check_parity(student, path, x, normalize_output=normed), max_abs=1e-4, min_cos=0.9999)
        assert report.n == 8
    assert student.normalize is True and not student.training  # switch restored after export and parity
    meta_h, meta_c = onnx_metadata(hailo), onnx_metadata(cpu)
    assert meta_h["normalized"] == "false" and meta_c["normalized"] == "true"
    assert Preprocess.from_dict(json.loads(meta_c["preprocess"])) == PP and meta_h["simplify"] == "ok"
    shape = [d.dim_value or d.dim_param for d in onnx.load(str(hailo)).graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 3, 160, 112]
    with torch.no_grad():
        ref = student(torch.from_numpy(x)).numpy()
    # host-side L2 on the Hailo file must give the same embeddings as the normalising CPU file and PyTorch
    assert cosine_rows(ref, onnx_embed(hailo, x)).min() > 0.9999
    assert np.abs(ref - onnx_embed(cpu, x)).max() < 1e-4


def test_real_student_model_exports_with_parity(crops, tmp_path):
    student_mod = pytest.importorskip("cardlib.models.student")
    torch.manual_seed(1)
    model = student_mod.build_student(64).eval()  # channels_last by default: the export must not depend on layout
    x = PP.normalize(PP.to_uint8_nhwc(crops[:4]))
    path = export_onnx(model, tmp_path / "real.onnx", dynamic_batch=False, normalize_output=False)
    assert_parity(check_parity(model, path, x, normalize_output=False), max_abs=1e-4, min_cos=0.9999)
    assert model.normalize is True and check_compatibility(path).ok


def test_parity_failure_is_detected(student, exported, crops):
    _, cpu = exported
    x = PP.normalize(PP.to_uint8_nhwc(crops[:4]))
    with pytest.raises(ParityError, match="max .* > allowed.*min cosine"):
        assert_parity(check_parity(student, cpu, x, True), max_abs=1e-15, min_cos=1.0 + 1e-9)
    drifted = copy.deepcopy(student)
    with torch.no_grad():
        drifted.proj.weight.add_(torch.randn_like(drifted.proj.weight) * 0.05)
    report = check_parity(drifted, cpu, x, True)
    with pytest.raises(ParityError, match="4 images"):
        assert_parity(report, max_abs=1e-4, min_cos=0.9999)


def test_export_needs_a_normalisation_switch(tmp_path):
    class Unnormed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def embed_unnormalized(self, x):
            return self.conv(x).mean(dim=(2, 3))

    path = export_onnx(Unnormed(), tmp_path / "u.onnx", input_size=(32, 24), dynamic_batch=True, normalize_output=True)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 24)).astype(np.float32)
    assert np.allclose(np.linalg.norm(onnx_embed(path, x), axis=1), 1.0, atol=1e-5)
    with pytest.raises(TypeError, match="normalize"):
        export_onnx(nn.Conv2d(3, 4, 3), tmp_path / "c.onnx", input_size=(32, 24), dynamic_batch=True, normalize_output=True)


def test_compatibility_flags_gelu_and_gather_by_node_name(tmp_path):
    class Transformerish(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.act = nn.GELU()
            self.register_buffer("order", torch.tensor([3, 1, 2, 0, 7, 6, 5, 4]))

        def forward(self, x):
            h = self.act(self.conv(x)).mean(dim=(2, 3))
            return h[:, self.order]  # indexing becomes Gather

    path = tmp_path / "bad.onnx"
    torch.onnx.export(Transformerish().eval(), (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["embedding"])
    report = check_compatibility(path)
    flagged = {op: name for name, op, _ in report.problems}
    assert not report.ok and {"Erf", "Gather"} <= set(flagged)
    assert all(flagged[op].startswith("/") for op in ("Erf", "Gather"))  # real node names, not placeholders
    with pytest.raises(HailoCompatError) as err:
        require_compatible(report)
    assert flagged["Erf"] in str(err.value) and flagged["Gather"] in str(err.value)


def test_compatibility_passes_static_student_and_flags_dynamic_batch(exported):
    hailo, cpu = exported
    ok = require_compatible(check_compatibility(hailo))
    assert ok.input_shape == (1, 3, 160, 112) and ok.op_counts["Conv"] > 40
    dyn = check_compatibility(cpu)
    assert any(name == "input" and "dynamic dimension 'batch'" in why for name, _, why in dyn.problems)
    with pytest.raises(HailoCompatError, match="batch"):
        require_compatible(dyn)


def test_compatibility_flags_non_image_input(tmp_path):
    path = tmp_path / "flat.onnx"
    torch.onnx.export(nn.Linear(10, 4), (torch.zeros(2, 10),), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["embedding"])
    reasons = " ".join(why for _, _, why in check_compatibility(path).problems)
    assert "2-D" in reasons and "expected 4-D NCHW" in reasons


def test_calibration_set_is_uint8_nhwc(crops, tmp_path):
    big = [np.ascontiguousarray(np.repeat(np.repeat(c, 2, axis=0), 2, axis=1)) for c in crops[:10]]  # 320x224 crops
    arr = build_calibration_set(big + crops[10:], PP, n=12)
    assert arr.shape == (12, 160, 112, 3) and arr.dtype == np.uint8
    assert arr.min() >= 0 and arr.max() <= 255 and arr.std() > 10  # real image content, not a constant
    path = save_calibration(arr, tmp_path / "calib" / "calib.npy")
    assert np.array_equal(np.load(path), arr)
    with pytest.warns(RuntimeWarning, match="fewer"):
        assert len(build_calibration_set(crops[:3], PP, n=8)) == 3
    with pytest.raises(ValueError, match="uint8 NHWC"):
        save_calibration(arr.astype(np.float32), tmp_path / "bad.npy")


def test_model_script_carries_the_preprocessing_contract():
    alls = model_script(PP, "hailo8", optimization_level=2, compression_level=1, calib_batch_size=8, calibset_size=64)
    mean, std = PP.hailo_normalization()
    assert f"normalization1 = normalization({mean}, {std})" in alls
    assert "normalization([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])" in alls
    assert "model_optimization_flavor(optimization_level=2, compression_level=1)" in alls
    assert "model_optimization_config(calibration, batch_size=8, calibset_size=64)" in alls
    other = model_script(Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)), "hailo8l", 0, 0)
    assert "normalization([127.5, 127.5, 127.5], [63.75, 63.75, 63.75])" in other
    with pytest.raises(ValueError, match="hw_arch"):
        model_script(PP, "hailo9", 2, 0)


def _fake_sdk(calls: list, hef_bytes: bytes):
    """A stand-in module with the DFC's ClientRunner surface that records every call."""
    sdk = types.ModuleType("fake_hailo_sdk_client")
    sdk.InferenceContext = types.SimpleNamespace(SDK_QUANTIZED="SDK_QUANTIZED", SDK_NATIVE="SDK_NATIVE")

    class Ctx:
        def __init__(self, kind):
            self.kind = kind

        def __enter__(self):
            calls.append(("infer_context", self.kind))
            return self

        def __exit__(self, *exc):
            return False

    class ClientRunner:
        def __init__(self, hw_arch):
            calls.append(("ClientRunner", hw_arch))

        def translate_onnx_model(self, model, net_name, start_node_names=None, end_node_names=None, net_input_shapes=None):
            calls.append(("translate_onnx_model", model, net_name, start_node_names, end_node_names, net_input_shapes))

        def load_model_script(self, text):
            calls.append(("load_model_script", text))

        def optimize(self, calib):
            calls.append(("optimize", calib))

        def save_har(self, path):
            calls.append(("save_har", path))

        def infer_context(self, kind):
            return Ctx(kind)

        def infer(self, ctx, data):
            calls.append(("infer", ctx.kind, data))
            return np.arange(len(data) * 64, dtype=np.float32).reshape(len(data), 1, 1, 64) + 1.0

        def compile(self):
            calls.append(("compile",))
            return hef_bytes

    sdk.ClientRunner = ClientRunner
    return sdk


def test_compile_hef_follows_the_dfc_call_sequence(exported, crops, tmp_path):
    hailo, cpu = exported
    calib = build_calibration_set(crops, PP, n=16)
    calib_path = save_calibration(calib, tmp_path / "calib.npy")
    alls = model_script(PP, "hailo8l", 2, 0, calibset_size=16)
    calls: list = []
    result = compile_hef(hailo, calib_path, alls, "hailo8l", tmp_path / "hef", sdk=_fake_sdk(calls, b"HEF\x00bytes"),
                         emulate_nhwc_uint8=calib[:3])
    names = [c[0] for c in calls]
    order = [names.index(n) for n in ("translate_onnx_model", "load_model_script", "optimize", "compile")]
    assert order == sorted(order) and names[0] == "ClientRunner" and calls[0][1] == "hailo8l"
    _, model, net, start, end, shapes = calls[names.index("translate_onnx_model")]
    gemm = next(n.name for n in onnx.load(str(hailo)).graph.node if n.op_type == "Gemm")
    assert model == str(hailo) and net == "cardlib_student" and start == ["input"] and end == [gemm]
    assert shapes == {"input": [1, 3, 160, 112]}
    assert calls[names.index("load_model_script")][1] == alls
    assert np.array_equal(calls[names.index("optimize")][1], calib)
    assert calls[names.index("infer_context")][1] == "SDK_QUANTIZED"
    assert calls[names.index("infer")][2].shape == (3, 160, 112, 3)
    assert result.hef_path.read_bytes() == b"HEF\x00bytes" and result.hw_arch == "hailo8l"
    assert result.emulated_embeddings.shape == (3, 64)
    assert np.allclose(np.linalg.norm(result.emulated_embeddings, axis=1), 1.0)
    refused: list = []
    with pytest.raises(HailoCompatError):
        compile_hef(cpu, calib_path, alls, "hailo8l", tmp_path / "x", sdk=_fake_sdk(refused, b"x"))
    assert refused == []  # the refusal comes before any DFC call


def test_cli_compile_parses_its_own_command_line(exported, crops, tmp_path):
    hailo, _ = exported
    calib = save_calibration(build_calibration_set(crops, PP, n=8), tmp_path / "calib.npy")
    alls = tmp_path / "student.alls"
    alls.write_text(model_script(PP, "hailo8", 2, 0, calibset_size=8))
    cmd = compile_command(hailo, calib, alls, "hailo8", tmp_path / "out")
    assert cmd.startswith("cardlib hailo compile --onnx ")
    parser = argparse.ArgumentParser()
    add_compile_arguments(parser)
    calls: list = []
    result = cli_compile(parser.parse_args(shlex.split(cmd)[3:]), sdk=_fake_sdk(calls, b"hef"))
    assert result.hef_path == tmp_path / "out" / "cardlib_student.hef" and calls[0] == ("ClientRunner", "hailo8")
    if not hailo_available():
        with pytest.raises(HailoUnavailableError, match="cardlib hailo compile"):
            compile_hef(hailo, calib, alls.read_text(), "hailo8", tmp_path / "real")


def test_int8_emulation_agrees_with_fp32(exported, crops, tmp_path):
    hailo, _ = exported
    u8 = PP.to_uint8_nhwc(crops)
    calib, held_out = u8[:32], PP.normalize(u8[32:])
    q = quantize_int8(hailo, calib, PP, tmp_path / "student_int8.onnx")
    assert onnx_metadata(q)["normalized"] == "false" and "QDQ" in onnx_metadata(q)["quantization"]
    agree = int8_agreement(hailo, q, held_out)
    assert agree["mean_cos"] >= 0.98 and agree["n"] == 16
    fp32, int8 = onnx_embed(hailo, held_out), onnx_embed(q, held_out)
    assert ((int8 @ fp32.T).argmax(axis=1) == np.arange(len(fp32))).all()  # each crop still finds itself
    # calibrating on a flat grey image clips real activations: agreement must visibly drop
    grey = quantize_int8(hailo, np.full((4, 160, 112, 3), 128, np.uint8), PP, tmp_path / "grey_int8.onnx")
    assert int8_agreement(hailo, grey, held_out)["mean_cos"] < agree["mean_cos"] - 0.01


def test_onnx_latency_reports_per_batch_numbers(exported):
    hailo, cpu = exported
    lat = onnx_latency(cpu, batch_sizes=(1, 4), runs=2, warmup=1, threads=1)
    assert set(lat) == {"1", "4"}
    assert lat["4"]["ms_per_image"] == pytest.approx(lat["4"]["ms_per_batch"] / 4)
    assert lat["1"]["images_per_s"] > 0
    assert "skipped" in onnx_latency(hailo, batch_sizes=(1, 4), runs=1, warmup=0, threads=1)["4"]


def test_int8_graph_runs_with_exact_integer_sums(tmp_path):
    """A 3x3 convolution of a white photo with large equal weights: 27 uint8 x int8 products of ~32,000 each.
    ONNX Runtime's fused x86 U8S8 kernels add them in pairs in 16 bits and saturate (on CPUs without VNNI) where the
    accelerator's integer arithmetic does not; the INT8 emulation must give the exact sum."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((4, 3, 3, 3), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["out"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 160, 112])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 160, 112])],
        [numpy_helper.from_array(w, "w")])
    fp32 = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(fp32))
    rng = np.random.default_rng(0)
    calib = np.concatenate([np.full((1, 160, 112, 3), 255, np.uint8), np.zeros((1, 160, 112, 3), np.uint8),
                            rng.integers(0, 256, (6, 160, 112, 3), dtype=np.uint8)])
    q = quantize_int8(fp32, calib, PP, tmp_path / "conv_int8.onnx")
    white = PP.normalize(np.full((1, 160, 112, 3), 255, np.uint8))
    centre_fp32 = ort_session(fp32).run(None, {"input": white})[0][0, :, 80, 56]  # 27 x 2.64 = 71.3
    centre_int8 = ort_session(q).run(None, {"input": white})[0][0, :, 80, 56]  # 9.8 when the sums saturate
    np.testing.assert_allclose(centre_int8, centre_fp32, rtol=0.02)

"""Distillation on tiny params: stage 1 learns the teacher's space, stage 2 keeps or improves retrieval."""
from pathlib import Path

import pytest
import torch

from cardlib.models.student import build_student, load_student, save_student
from cardlib.params import load_params
from cardlib.train.tasks import run_task

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.n_cards=24", "data.n_sets=2", "data.photos_train=4", "data.photos_val=2", "data.photos_test=1",
        "data.input_size=[64, 48]", "data.card_size=[140, 100]", "data.photo_size=[192, 256]", "data.crops=simulated",
        "data.difficulty=0.5", "teacher.embed_dim=32", "teacher.batch_size=16", "teacher.epochs=4",
        "distill.stage1.batch_size=16", "distill.stage1.epochs=4", "distill.stage1.lr=0.003",
        "distill.stage2.batch_size=16", "distill.stage2.epochs=3", "distill.stage2.difficulty=0.7",
        "compute.device=cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cardlib.data.build import build_dataset

    torch.set_num_threads(1)
    params = load_params(REPO / "params" / "smoke.yaml", TINY)
    root = tmp_path_factory.mktemp("distill")
    build_dataset(params, root / "data")
    teacher = run_task("teacher", params, root / "data", root / "teacher")
    s1 = run_task("stage1", params, root / "data", root / "s1", teacher_dir=root / "teacher" / "model")
    s2 = run_task("stage2", params, root / "data", root / "s2", teacher_dir=root / "teacher" / "model",
                  stage1_dir=root / "s1" / "model")
    return root, teacher, s1, s2


def test_stage1_raises_student_teacher_agreement(trained):
    _, _, s1, _ = trained
    m = s1["metrics"]
    assert m["agreement_mean_cos"] >= m["untrained_agreement_mean_cos"] + 0.2, m
    assert [r["epoch"] for r in s1["history"]] == [1, 2, 3, 4] and "agreement_mean_cos" in s1["history"][-1]


def test_stage2_keeps_or_improves_stage1_top1(trained):
    _, _, s1, s2 = trained
    top1 = lambda r: r["history"][-1]["val_top1_seen"] + r["history"][-1].get("val_top1_novel", 0.0)  # noqa: E731
    assert top1(s2) >= top1(s1) - 0.05, (s1["history"][-1], s2["history"][-1])


def test_student_outputs_are_l2_normalised_and_round_trip(trained, tmp_path):
    root, _, _, _ = trained
    student = load_student(root / "s2" / "model")
    x = torch.randn(3, 3, 64, 48)
    with torch.inference_mode():
        y = student(x)
        student.normalize = False
        raw = student(x)
    assert torch.allclose(y.norm(dim=1), torch.ones(3), atol=1e-5) and not torch.allclose(raw.norm(dim=1), torch.ones(3))
    save_student(student, tmp_path / "copy")
    again = load_student(tmp_path / "copy")
    with torch.inference_mode():
        assert torch.equal(again(x), y)


def test_student_loads_backbone_weights_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    donor = build_student(16)
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in donor.backbone.state_dict().items()}, str(path))
    student = build_student(16, weights=str(path))
    for k, v in donor.backbone.state_dict().items():
        assert torch.equal(student.backbone.state_dict()[k], v)
    save_file({"nonsense.weight": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_student(16, weights=str(tmp_path / "bad.safetensors"))

"""Teacher model and the shared training machinery: learning, save/load, pretrained loading, resume, losses, DDP."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import DINOv3ViTModel

from cardlib.models.teacher import build_teacher, load_teacher, preset_config, save_teacher
from cardlib.profiling import profile_model
from cardlib.train.ddp import launch_torchrun
from cardlib.train.loop import TrainConfig, fit, param_groups
from cardlib.train.losses import SubCenterArcFace, feature_cosine, info_nce, rkd_angle, rkd_distance
from cardlib.train.retrieval import retrieval_evaluator, retrieval_topk
from cardlib.train.teacher import train_teacher
from cardlib.train.worker import ToyPairs, ToyReferences, state_dict_sha256

SIZE = (64, 48)  # (H, W): multiples of the 16-pixel patch, small enough for seconds-long CPU training


def _tiny(seed: int = 0, embed_dim: int = 64):
    torch.manual_seed(seed)
    return build_teacher("dinov3-tiny", embed_dim=embed_dim, pool="cls+mean", image_size=SIZE)


@pytest.fixture
def toy():
    train = ToyPairs(24, 6, SIZE, seed=0, photo_seed=1)
    val = ToyPairs(24, 2, SIZE, seed=0, photo_seed=2, photos_only=True)
    return train, retrieval_evaluator(val, ToyReferences(train))


def test_tiny_teacher_learns_retrieval(toy, tmp_path):
    train, evaluate = toy
    model = _tiny()
    before = evaluate(model)["top1"]
    history = train_teacher(model, train, evaluate, TrainConfig(epochs=6, lr=1e-3, seed=0), tmp_path / "ckpt",
                            batch_size=24, temperature=0.1)
    after = history[-1]["top1"]
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert history[-1]["loss"] < history[0]["loss"]
    assert after >= before + 0.25, f"val top-1 {before:.3f} → {after:.3f}"
    assert json.loads((tmp_path / "ckpt" / "history.json").read_text()) == json.loads(history.to_json())


def test_save_load_round_trip_gives_identical_embeddings(tmp_path):
    model = _tiny(seed=3).eval()
    x = torch.randn(4, 3, *SIZE)
    out = save_teacher(model, tmp_path / "teacher")
    assert {"config.json", "model.safetensors", "head.safetensors", "cardlib_teacher.json"} <= {p.name for p in out.iterdir()}
    loaded = load_teacher(out)
    assert (loaded.pool, loaded.embed_dim, loaded.image_size, loaded.preset) == ("cls+mean", 64, SIZE, "dinov3-tiny")
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    with pytest.raises(FileNotFoundError, match="not a cardlib teacher"):
        load_teacher(tmp_path)


def test_build_from_local_pretrained_dir(tmp_path):
    torch.manual_seed(7)
    backbone = DINOv3ViTModel(preset_config("dinov3-tiny", SIZE))
    backbone.save_pretrained(tmp_path / "hf", safe_serialization=True)
    model = build_teacher("dinov3-tiny", embed_dim=32, pool="cls", weights_dir=tmp_path / "hf", image_size=SIZE)
    for name, p in backbone.state_dict().items():
        assert torch.equal(p, model.backbone.state_dict()[name]), name
    assert model(torch.randn(2, 3, *SIZE)).shape == (2, 32)
    with pytest.raises(Exception, match="does not exist"):
        build_teacher("dinov3-tiny", weights_dir=tmp_path / "missing", image_size=SIZE)
    with pytest.raises(ValueError, match="unknown teacher preset"):
        build_teacher("dinov3-huge")
    with pytest.raises(ValueError, match="multiples of the patch size"):
        build_teacher("dinov3-tiny", image_size=(150, 112))


def test_resume_matches_uninterrupted_run(tmp_path):
    train, evaluate = ToyPairs(12, 4, SIZE, seed=1), None
    cfg = TrainConfig(epochs=3, lr=1e-3, seed=5)
    straight = _tiny(seed=1)
    full = train_teacher(straight, train, evaluate, cfg, tmp_path / "a", batch_size=16)

    class Crash(RuntimeError):
        pass

    def crash_after_two(record, model):
        if record["epoch"] == 2:
            raise Crash()

    with pytest.raises(Crash):
        train_teacher(_tiny(seed=1), train, evaluate, cfg, tmp_path / "b", batch_size=16, on_epoch_end=crash_after_two)
    assert sorted(p.name for p in (tmp_path / "b").glob("epoch-*")) == ["epoch-0002"]
    resumed_model = _tiny(seed=99)  # different init: every weight must come from the checkpoint
    resumed = train_teacher(resumed_model, train, evaluate, cfg, tmp_path / "b", batch_size=16)
    assert state_dict_sha256(resumed_model) == state_dict_sha256(straight)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def test_param_groups_layer_decay_and_no_decay():
    model = _tiny()
    groups = param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["head.weight"]["lr"] == 1.0 and by_name["head.weight"]["weight_decay"] == 0.1
    assert by_name["head.bias"]["weight_decay"] == 0.0
    assert by_name["backbone.model.layer.3.mlp.up_proj.weight"]["lr"] == 0.5
    assert by_name["backbone.model.layer.0.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["backbone.embeddings.patch_embeddings.weight"]["lr"] == 0.5 ** 5
    assert "backbone.embeddings.mask_token" not in by_name  # frozen: never used outside pretraining


def test_grad_accum_matches_large_batch(tmp_path):
    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(4)]

    def step(model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y), {}

    def run(batches, accum, name):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        fit(model, step, batches, TrainConfig(epochs=1, lr=0.1, grad_accum=accum, warmup_frac=0.0, device="cpu",
                                              max_grad_norm=0.0), tmp_path / name)
        return model.weight.detach().clone()

    big = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(data[::2], data[1::2])]
    assert torch.allclose(run(data, 2, "accum"), run(big, 1, "big"), atol=1e-6)
    history = fit(torch.nn.Linear(4, 1), step, data, TrainConfig(epochs=2, bf16=True, device="cpu"), tmp_path / "bf16")
    assert len(history) == 2 and all(math.isfinite(r["loss"]) for r in history)


def test_eval_every_validates_every_nth_epoch_and_the_last(tmp_path):
    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(2)]

    def step(model, batch):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1]), {}

    history = fit(torch.nn.Linear(4, 1), step, data, TrainConfig(epochs=5, eval_every=2, device="cpu"),
                  tmp_path / "ev", evaluate=lambda m: {"val_score": 1.0})
    assert [r["epoch"] for r in history if "val_score" in r] == [2, 4, 5]
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(eval_every=0)


def test_train_config_from_params_and_validation():
    from cardlib.params import Params

    cfg = TrainConfig.from_section(Params().teacher, seed=3)
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.seed) == (8, 1e-3, 0.05, 3)
    with pytest.raises(ValueError, match="warmup_frac"):
        TrainConfig(warmup_frac=1.5)


def test_losses():
    torch.manual_seed(0)
    photo = torch.nn.functional.normalize(torch.randn(16, 32), dim=1)
    ref = torch.nn.functional.normalize(photo + 0.1 * torch.randn(16, 32), dim=1)
    labels = torch.arange(16)
    assert info_nce(photo, ref, labels, 0.1) < info_nce(photo, ref[torch.randperm(16)], labels, 0.1)
    # two photos of one card and its reference twice: the duplicate is a positive, so it costs nothing extra
    dup_p, dup_r = photo.clone(), ref.clone()
    dup_p[1], dup_r[1] = dup_p[0], dup_r[0]
    dup_labels = labels.clone()
    dup_labels[1] = 0
    assert info_nce(dup_p, dup_r, dup_labels, 0.1) < info_nce(dup_p, dup_r, labels, 0.1) - 0.05
    student = torch.randn(12, 16)
    assert rkd_distance(student, student.clone()) == 0 and rkd_angle(student, student.clone()) == 0
    assert float(feature_cosine(student, student * 3)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(12, 16)
    assert rkd_distance(student, other) > 0 and rkd_angle(student, other) > 0 and feature_cosine(student, other) > 0.5
    arc = SubCenterArcFace(16, n_classes=4, k=3, margin=0.3, scale=16)
    emb, y = torch.randn(32, 16, requires_grad=True), torch.arange(32) % 4
    opt = torch.optim.SGD([emb, *arc.parameters()], lr=0.5)
    first = float(arc(emb, y).detach())
    for _ in range(30):
        opt.zero_grad()
        arc(emb, y).backward()
        opt.step()
    assert float(arc(emb, y).detach()) < first / 2
    with pytest.raises(ValueError, match="labels must lie"):
        arc(emb, torch.full((32,), 4))


def test_retrieval_topk_counts_hits():
    gallery = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.1, 0, 0], [0, 1, 0.9, 0], [0.2, 0, 0, 1]], dtype=np.float32)
    out = retrieval_topk(queries, [0, 2, 3], gallery, [0, 1, 2, 3], k=(1, 2))
    assert out == {"top1": pytest.approx(2 / 3), "top2": 1.0, "n_queries": 3, "n_gallery": 4}
    with pytest.raises(ValueError, match="one label per embedding"):
        retrieval_topk(queries, [0, 1], gallery, [0, 1, 2, 3])


def test_retrieval_topk_takes_the_better_reading_of_each_query():
    gallery = np.eye(4, dtype=np.float32)
    upright = np.array([[0, 0, 1, 0.2], [0, 1, 0, 0]], dtype=np.float32)  # the first photo, read upright, looks like 2
    turned = np.array([[1, 0, 0.1, 0], [0, 0, 0.3, 0.2]], dtype=np.float32)  # turned 180°, it is card 0
    one = retrieval_topk(upright, [0, 1], gallery, [0, 1, 2, 3], k=(1,))
    both = retrieval_topk(np.stack([upright, turned], axis=1), [0, 1], gallery, [0, 1, 2, 3], k=(1,))
    assert one["top1"] == 0.5 and both["top1"] == 1.0 and both["n_queries"] == 2


def test_turned_dataset_is_the_crop_read_upside_down():
    from cardlib.find_card import both_orientations
    from cardlib.preprocess import Preprocess
    from cardlib.train.retrieval import Turned

    pp = Preprocess()
    crop = np.random.default_rng(0).integers(0, 256, (160, 112, 3), dtype=np.uint8)
    crop[:20] = 255  # a bright top edge tells up from down

    class One(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return pp(crop), 7

    image, label = Turned(One())[0]
    assert label == 7 and torch.equal(image, pp(both_orientations(crop)[1]))


def test_profile_model_reports_flops_and_latency(tmp_path):
    model = _tiny()
    out = save_teacher(model, tmp_path / "t")
    prof = profile_model(model, (3, *SIZE), batch_sizes=(1, 4), repeats=2, path=out)
    assert prof["params"] == sum(p.numel() for p in model.parameters())
    # ~2·params·tokens is a floor on the forward FLOPs of a ViT (every token meets every linear layer)
    tokens = (SIZE[0] // 16) * (SIZE[1] // 16) + 1
    assert prof["gflops_per_image"] * 1e9 > 2 * 0.9 * prof["params"] * tokens * 0.5
    assert prof["batches"]["4"]["images_per_s"] > 0 and prof["file_size_mb"] > 0
    json.dumps(prof)


def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    proc = launch_torchrun("cardlib.train.worker", ["--task", "toy-teacher", "--out", str(out), "--epochs", "2",
                                                    "--batch-size", "8", "--n-cards", "16"], nproc=2, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shas = [(out / f"rank{r}.sha256").read_text().strip() for r in range(2)]
    assert len(shas[0]) == 64 and shas[0] == shas[1]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and all(math.isfinite(r["loss"]) for r in history)
    assert load_teacher(out / "teacher").embed_dim == 64

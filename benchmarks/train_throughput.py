"""Training throughput: images/s of `fit` + a step_fn versus a bare PyTorch loop on the same model and batches.

    python benchmarks/train_throughput.py [--model dinov3-tiny dinov3-small] [--batch-size 64] [--steps 6]

Writes benchmarks/results/train_throughput.json. A model is a MODELS entry: a factory returning
(model, step_fn, make_batch); other stages (e.g. the student) add theirs to MODELS.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from cardlib.models.student import build_student
from cardlib.models.teacher import build_teacher
from cardlib.train.distill import Stage1Objective, Stage2Objective, stage1_step, stage2_step
from cardlib.train.loop import TrainConfig, fit
from cardlib.train.teacher import PairObjective, pair_step

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
Factory = Callable[[tuple[int, int]], tuple[torch.nn.Module, Callable, Callable[[int], tuple]]]


def teacher_factory(preset: str) -> Factory:
    """Teacher + InfoNCE objective; a batch is (photos, references, labels): 2·batch images per step."""
    def make(size: tuple[int, int]):
        model = PairObjective(build_teacher(preset, embed_dim=256, pool="cls+mean", image_size=size))

        def make_batch(bs: int):
            return torch.randn(bs, 3, *size), torch.randn(bs, 3, *size), torch.arange(bs)
        return model, pair_step, make_batch
    return make


def student_factory(stage: str) -> Factory:
    """EfficientNet-Lite0 student: stage 1 (photos + cached teacher embeddings), stage 2 (photo/reference pairs)."""
    def make(size: tuple[int, int]):
        student = build_student(256)
        if stage == "stage1":
            model = Stage1Objective(student, 1.0, 1.0, 2.0)

            def make_batch(bs: int):
                t = torch.nn.functional.normalize(torch.randn(bs, 256), dim=1)
                return torch.randn(bs, 3, *size), t, torch.arange(bs)
            return model, stage1_step, make_batch
        model = Stage2Objective(student, 1.0, 1.0, 1.0, 2.0)

        def make_batch2(bs: int):
            t = torch.nn.functional.normalize(torch.randn(bs, 256), dim=1)
            return torch.randn(bs, 3, *size), torch.randn(bs, 3, *size), t, torch.arange(bs)
        return model, stage2_step, make_batch2
    return make


MODELS: dict[str, Factory] = {"dinov3-tiny": teacher_factory("dinov3-tiny"),
                              "dinov3-small": teacher_factory("dinov3-small"),
                              "student-stage1": student_factory("stage1"),
                              "student-stage2": student_factory("stage2")}


def _images(batch) -> int:
    return sum(t.shape[0] for t in batch if torch.is_tensor(t) and t.ndim == 4)


def bare_loop(model, step_fn, batches, lr: float) -> float:
    """Seconds for a plain AdamW loop over `batches` (forward, backward, step)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    t0 = time.perf_counter()
    for batch in batches:
        loss, _ = step_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def bench(name: str, batch_size: int, steps: int, size: tuple[int, int], warmup: int = 1) -> dict:
    factory = MODELS[name]
    torch.manual_seed(0)
    model, step_fn, make_batch = factory(size)
    batches = [make_batch(batch_size) for _ in range(steps)]
    bare_loop(model, step_fn, batches[:warmup], lr=1e-4)  # first-call allocations stay out of both timings
    bare_s = bare_loop(model, step_fn, batches, lr=1e-4)
    torch.manual_seed(0)
    model, step_fn, _ = factory(size)
    bare_loop(model, step_fn, batches[:warmup], lr=1e-4)
    cfg = TrainConfig(epochs=1, lr=1e-4, warmup_frac=0.0, device="cpu", log_every=10**6)
    with tempfile.TemporaryDirectory() as ckpt:
        t0 = time.perf_counter()
        history = fit(model, step_fn, batches, cfg, ckpt)
        fit_total = time.perf_counter() - t0
    fit_s = history[0]["seconds"]  # the epoch's training steps, without the checkpoint write
    images = _images(batches[0]) * steps
    return {"model": name, "batch_size": batch_size, "images_per_step": _images(batches[0]), "steps": steps,
            "input_hw": list(size), "params": sum(p.numel() for p in model.parameters()),
            "bare_images_per_s": images / bare_s, "fit_images_per_s": images / fit_s,
            "fit_overhead_ratio": fit_s / bare_s, "fit_with_checkpoint_s": fit_total, "bare_s": bare_s, "fit_s": fit_s}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--size", type=int, nargs=2, default=[160, 112], metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [bench(m, args.batch_size, args.steps, tuple(args.size)) for m in args.model]
    result = {"benchmark": "train_throughput", "torch": torch.__version__, "python": platform.python_version(),
              "threads": args.threads, "device": "cpu", "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"{r['model']:>14}: bare {r['bare_images_per_s']:.1f} img/s, fit {r['fit_images_per_s']:.1f} img/s, "
              f"overhead ×{r['fit_overhead_ratio']:.3f}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()

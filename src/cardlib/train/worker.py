"""`python -m cardlib.train.worker --task NAME --out DIR`: one training task per process, torchrun-ready.

The built-in `toy-teacher` task trains the teacher on a tiny deterministic set of drawn cards; it backs the
DDP test and is a seconds-long smoke check of a machine's training setup (single process or torchrun).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from cardlib.preprocess import Preprocess
from cardlib.train import ddp

log = logging.getLogger(__name__)


def toy_card(card: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A drawn 'card': coloured background, border and a few shapes; RGB uint8 (H, W, 3)."""
    h, w = size
    rng = np.random.default_rng([seed, card])
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(40, 216, 3)
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), tuple(int(v) for v in rng.integers(0, 256, 3)), max(1, w // 16))
    for _ in range(4):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(max(2, w // 10), max(3, w // 3)))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), r, colour, -1)
        else:
            cv2.rectangle(img, (x - r, y - r // 2), (x + r, y + r // 2), colour, -1)
    return img


def toy_photo(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 'photo' crop of a card: small rotation/shift/scale, lighting change, blur and sensor noise."""
    h, w = ref.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-8, 8), rng.uniform(0.9, 1.1))
    m[:, 2] += rng.uniform(-0.06, 0.06, 2) * (w, h)
    img = cv2.warpAffine(ref, m, (w, h), borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    img = img * rng.uniform(0.7, 1.3, 3) + rng.uniform(-30, 30)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


class ToyPairs(Dataset):
    """In-memory (photo crop, reference, label) pairs of toy cards; `photos_only` yields (photo, label)."""

    def __init__(self, n_cards: int, photos_per_card: int, size: tuple[int, int] = (64, 48), seed: int = 0,
                 photo_seed: int = 1, photos_only: bool = False):
        if n_cards < 2 or photos_per_card < 1:
            raise ValueError("ToyPairs needs n_cards >= 2 and photos_per_card >= 1")
        pre = Preprocess(height=size[0], width=size[1])
        refs = [toy_card(c, size, seed) for c in range(n_cards)]
        rng = np.random.default_rng([seed, photo_seed])
        self.labels = torch.arange(n_cards).repeat_interleave(photos_per_card)
        self.photos = pre.batch([toy_photo(refs[int(c)], rng) for c in self.labels])
        self.refs = pre.batch(refs)
        self.n_classes, self.photos_only = n_cards, photos_only

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        label = self.labels[i]
        if self.photos_only:
            return self.photos[i], label
        return self.photos[i], self.refs[label], label


class ToyReferences(Dataset):
    """(reference, label) for every toy card: the retrieval gallery."""

    def __init__(self, pairs: ToyPairs):
        self.refs = pairs.refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        return self.refs[i], i


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over every (name, dtype, shape, bytes) of the state dict, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_toy_teacher(args: argparse.Namespace, rank: int, out: Path) -> None:
    from cardlib.models.teacher import build_teacher, save_teacher
    from cardlib.train.loop import TrainConfig
    from cardlib.train.retrieval import retrieval_evaluator
    from cardlib.train.teacher import train_teacher

    size = tuple(args.image_size)
    train = ToyPairs(args.n_cards, args.photos_per_card, size, seed=args.seed, photo_seed=1)
    val = ToyPairs(args.n_cards, 1, size, seed=args.seed, photo_seed=2, photos_only=True)
    torch.manual_seed(args.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_teacher(args.preset, embed_dim=args.embed_dim, pool="cls+mean", image_size=size)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=0.05, warmup_frac=0.1, seed=args.seed,
                      device=args.device)
    history = train_teacher(model, train, retrieval_evaluator(val, ToyReferences(train)), cfg, out / "checkpoints",
                            batch_size=args.batch_size, temperature=0.1)
    (out / f"rank{rank}.sha256").write_text(state_dict_sha256(model) + "\n")
    if rank == 0:
        history.to_json(out / "history.json")
        save_teacher(model, out / "teacher")


TASKS: dict[str, Callable[[argparse.Namespace, int, Path], None]] = {"toy-teacher": run_toy_teacher}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cardlib.train.worker", description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--out", required=True, type=Path, help="output directory (rank 0 writes history and model)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="dinov3-tiny")
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--image-size", type=int, nargs=2, default=[64, 48], metavar=("H", "W"))
    p.add_argument("--n-cards", type=int, default=16)
    p.add_argument("--photos-per-card", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rank, world, device = ddp.init_distributed()
    code = 0
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        TASKS[args.task](args, rank, args.out)
        if rank == 0:
            (args.out / "run.json").write_text(json.dumps({"task": args.task, "world_size": world,
                                                           "device": str(device), "args": vars(args)}, default=str))
    except Exception:
        log.exception("task %s failed on rank %d", args.task, rank)
        code = 1
    ddp.cleanup_and_exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The one training loop: AdamW + layer decay, warm-up/cosine, accumulation, bf16, checkpoints, resume, DDP."""
from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cardlib.train import ddp

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, dict[str, float]]"]
MODEL_FILE, STATE_FILE, HISTORY_FILE = "model.safetensors", "state.pt", "history.json"


@dataclass
class TrainConfig:
    epochs: int = 8
    lr: float = 1e-3  # peak LR after warm-up (for the last layer when layer_decay < 1)
    weight_decay: float = 0.05  # AdamW; never applied to norms, biases, tokens
    warmup_frac: float = 0.1  # fraction of optimizer steps spent warming up linearly
    grad_accum: int = 1  # micro-batches per optimizer step
    layer_decay: float = 1.0  # LR multiplier per block towards the input; < 1 for pretrained backbones
    freeze_blocks: int = 0  # freeze embeddings + the first N blocks
    bf16: bool = False  # autocast to bfloat16 where the device supports it
    max_grad_norm: float = 1.0  # 0 = no clipping
    seed: int = 0
    log_every: int = 10  # optimizer steps between progress-bar updates
    device: str = "auto"  # auto | cpu | cuda | cuda:N; under DDP the rank's device wins
    max_steps_per_epoch: int = 0  # 0 = the whole loader; caps micro-batches for smoke runs
    eval_every: int = 1  # epochs between validations (the last epoch is always validated)

    def __post_init__(self) -> None:
        checks = {"epochs": self.epochs >= 1, "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0,
                  "warmup_frac": 0 <= self.warmup_frac < 1, "grad_accum": self.grad_accum >= 1,
                  "layer_decay": 0 < self.layer_decay <= 1, "freeze_blocks": self.freeze_blocks >= 0,
                  "max_grad_norm": self.max_grad_norm >= 0, "log_every": self.log_every >= 1,
                  "max_steps_per_epoch": self.max_steps_per_epoch >= 0, "eval_every": self.eval_every >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"TrainConfig: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    @classmethod
    def from_section(cls, section: Any, **overrides) -> "TrainConfig":
        """Pick the matching fields of a params section (e.g. params.teacher) plus explicit overrides."""
        src = section.model_dump() if hasattr(section, "model_dump") else dict(section)
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in src.items() if k in names}, **overrides})


class History(list):
    """Per-epoch records (epoch, loss, lr, seconds, metrics…), JSON-serialisable."""

    def to_json(self, path: Optional[str | Path] = None) -> str:
        text = json.dumps(list(self), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> "History":
        return cls(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- parameter groups

_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|blocks)\.(\d+)\.")
_EMBED = ("embed", "cls_token", "register_tokens", "mask_token", "pos_", "conv_stem", "stem")


def _block_index(name: str) -> Optional[int]:
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Depth of each parameter: 0 = embeddings, 1..N = blocks, N+1 = final norm and heads; and N."""
    names = [n for n, _ in model.named_parameters()]
    n_blocks = max((b + 1 for b in map(_block_index, names) if b is not None), default=0)
    ids = {}
    for n in names:
        b = _block_index(n)
        ids[n] = b + 1 if b is not None else 0 if any(t in n for t in _EMBED) else n_blocks + 1
    return ids, n_blocks


def freeze_blocks(model: nn.Module, n: int) -> int:
    """Freeze embeddings and the first n blocks (n = 0: nothing); returns the number of frozen tensors."""
    if n <= 0:
        return 0
    ids, n_blocks = layer_ids(model)
    if n > n_blocks:
        raise ValueError(f"freeze_blocks={n} but the model has only {n_blocks} blocks")
    frozen = 0
    for name, p in model.named_parameters():
        if ids[name] <= n:
            p.requires_grad_(False)
            frozen += 1
    return frozen


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups: LR × layer_decay^(depth from the top); no weight decay on norms, biases and tokens."""
    ids, n_blocks = layer_ids(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or "token" in name
        key = (ids[name], no_decay)
        if key not in groups:
            scale = layer_decay ** (n_blocks + 1 - ids[name])
            groups[key] = {"params": [], "names": [], "lr": lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [groups[k] for k in sorted(groups)]


class WarmupCosine:
    """LR factor per optimizer step: linear warm-up to 1, then cosine to 0 at `total` steps."""

    def __init__(self, total: int, warmup: int):
        self.total, self.warmup = max(1, total), max(0, min(warmup, total - 1))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- helpers

def resolve_device(name: str = "auto") -> torch.device:
    if ddp.is_distributed():
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to the device."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _seed_epoch(seed: int, epoch: int, loader) -> None:
    # Every epoch's randomness is a function of (seed, epoch) alone, so a resumed run replays the uninterrupted one.
    s = seed * 100_003 + epoch
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)
    for part in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None), getattr(loader, "dataset", None)):
        if hasattr(part, "set_epoch"):  # DistributedSampler shards, and datasets that draw fresh crops per epoch
            part.set_epoch(epoch)
    gen = getattr(loader, "generator", None)
    if isinstance(gen, torch.Generator):
        gen.manual_seed(s)


def _last_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    done = [p for p in ckpt_dir.glob("epoch-[0-9][0-9][0-9][0-9]") if (p / MODEL_FILE).is_file() and (p / STATE_FILE).is_file()]
    return max(done, default=None, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(ckpt_dir: Path, epoch: int, model: nn.Module, opt, sched, history: History, cfg: TrainConfig) -> Path:
    final = ckpt_dir / f"epoch-{epoch:04d}"
    tmp = ckpt_dir / f".tmp-epoch-{epoch:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / MODEL_FILE))
    torch.save({"epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "history_json": history.to_json(), "config_json": json.dumps(asdict(cfg))}, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # an epoch dir exists only once complete: resume never sees half a checkpoint
    for old in ckpt_dir.glob("epoch-[0-9][0-9][0-9][0-9]"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    history.to_json(ckpt_dir / HISTORY_FILE)
    return final


def _mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    if not ddp.is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) / ddp.world_size() for k, v in zip(keys, t.tolist())}


# ---------------------------------------------------------------- the loop

def fit(model: nn.Module, step_fn: StepFn, train_loader, cfg: TrainConfig, ckpt_dir: str | Path,
        evaluate: Optional[Callable[[nn.Module], dict]] = None,
        on_epoch_end: Optional[Callable[[dict, nn.Module], None]] = None, resume: bool = True) -> History:
    """Train `model` with `step_fn(model, batch) -> (loss, metrics)`; checkpoint each epoch; return the History."""
    ckpt_dir = Path(ckpt_dir)
    main = ddp.is_main_process()
    device = resolve_device(cfg.device)
    model.to(device)
    freeze_blocks(model, cfg.freeze_blocks)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.weight_decay, cfg.layer_decay), lr=cfg.lr)
    n_micro = len(train_loader) if not cfg.max_steps_per_epoch else min(len(train_loader), cfg.max_steps_per_epoch)
    if n_micro == 0:
        raise ValueError("the training loader yields no batches (dataset smaller than one batch with drop_last?)")
    steps_per_epoch = math.ceil(n_micro / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(total, round(cfg.warmup_frac * total)))

    history, start = History(), 0
    last = _last_checkpoint(ckpt_dir) if resume and ckpt_dir.is_dir() else None
    if last is not None:
        load_model(model, str(last / MODEL_FILE), device=str(device))
        state = torch.load(last / STATE_FILE, map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start = History(json.loads(state["history_json"])), int(state["epoch"])
        if main:
            log.info("resumed from %s (epoch %d of %d)", last, start, cfg.epochs)
    if ddp.is_distributed():
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        train_model = model
    use_bf16 = cfg.bf16 and bf16_supported(device)
    if cfg.bf16 and not use_bf16 and main:
        log.warning("bf16 requested but unsupported on %s: training in float32", device)

    for epoch in range(start, cfg.epochs):
        _seed_epoch(cfg.seed, epoch, train_loader)
        train_model.train()
        t0, sums, n_seen = time.perf_counter(), {"loss": 0.0}, 0
        bar = tqdm(total=n_micro, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=None if main else True, leave=False)
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_loader):
            if i >= n_micro:
                break
            window_start = (i // cfg.grad_accum) * cfg.grad_accum
            window = min(cfg.grad_accum, n_micro - window_start)
            stepping = i - window_start == window - 1
            sync = train_model.no_sync() if (not stepping and isinstance(train_model, DistributedDataParallel)) \
                else nullcontext()
            with sync:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss, metrics = step_fn(train_model, to_device(batch, device))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1}, batch {i}")
                (loss / window).backward()
            sums["loss"] += float(loss.detach())
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_seen += 1
            if stepping:
                if cfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if (sched.last_epoch % cfg.log_every == 0) or i == n_micro - 1:
                    bar.set_postfix(loss=f"{sums['loss'] / n_seen:.4f}", lr=f"{max(sched.get_last_lr()):.2e}")
            bar.update(1)
        bar.close()

        record = {"epoch": epoch + 1, **_mean_across_ranks({k: v / n_seen for k, v in sums.items()}),
                  "lr": max(sched.get_last_lr()), "steps": sched.last_epoch, "seconds": time.perf_counter() - t0}
        if evaluate is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            record.update(_evaluate_on_main(evaluate, model, main))
        history.append(record)
        if main:
            _save_checkpoint(ckpt_dir, epoch + 1, model, opt, sched, history, cfg)
            log.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                     " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if on_epoch_end is not None:
                on_epoch_end(record, model)
        if ddp.is_distributed():
            dist.barrier()
    model.eval()
    return history


def _evaluate_on_main(evaluate: Callable[[nn.Module], dict], model: nn.Module, main: bool) -> dict:
    # Rank 0 evaluates the unwrapped model; the others receive its metrics so every rank's History agrees.
    metrics = None
    if main:
        model.eval()
        metrics = {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                   for k, v in evaluate(model).items()}
        model.train()
    if ddp.is_distributed():
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics

"""Model profile: parameters, forward GFLOPs, latency and throughput per batch size, peak memory, file size."""
from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def path_size_bytes(path: str | Path) -> int:
    """Size of a file, or the total size of the files under a directory."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raise FileNotFoundError(f"model path not found: {p}")


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass (a multiply-add counts 2), from torch's FlopCounterMode."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def profile_model(model: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 32),
                  device: str | torch.device = "cpu", warmup: int = 2, repeats: int = 5,
                  path: Optional[str | Path] = None) -> dict:
    """Profile a model on random inputs of shape (C, H, W) (or (N, C, H, W): N is ignored); JSON-serialisable."""
    shape = tuple(int(s) for s in input_shape)[-3:]
    if len(shape) != 3 or min(shape) < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"input_shape must be (C, H, W) and batch sizes positive, got {input_shape}, {batch_sizes}")
    device = torch.device(device)
    model = model.to(device).eval()
    out: dict = {"params": int(sum(p.numel() for p in model.parameters())), "input_shape": list(shape),
                 "device": str(device), "threads": torch.get_num_threads(),
                 "gflops_per_image": forward_flops(model, torch.randn(1, *shape, device=device)) / 1e9,
                 "batches": {}}
    for bs in batch_sizes:
        x = torch.randn(bs, *shape, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            base = _maxrss_bytes()
        times = []
        with torch.inference_mode():
            for i in range(warmup + repeats):
                _sync(device)
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        if device.type == "cuda":
            peak, method = torch.cuda.max_memory_allocated(device) - base, "cuda.max_memory_allocated delta"
        else:
            # process-wide high-water mark: a lower bound when an earlier step already peaked higher
            peak, method = _maxrss_bytes() - base, "ru_maxrss delta (lower bound)"
        median = statistics.median(times)
        out["batches"][str(bs)] = {"latency_ms": median * 1e3, "latency_ms_per_image": median * 1e3 / bs,
                                   "images_per_s": bs / median, "peak_memory_mb": max(0, peak) / 2**20,
                                   "peak_memory_method": method}
    if path is not None:
        out["file_size_mb"] = path_size_bytes(path) / 2**20
    return out

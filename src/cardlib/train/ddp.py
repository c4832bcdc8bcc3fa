"""torchrun / DistributedDataParallel helpers: process-group setup, rank-aware loaders, a launcher."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cardlib.data.datasets import seed_worker


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA); without torchrun env: (0, 1, local device)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not is_distributed():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), device


def cleanup_and_exit(code: int = 0) -> None:
    """Tear down the process group and exit at once: gloo can abort in interpreter shutdown otherwise."""
    if is_distributed():
        try:
            dist.barrier()
            dist.destroy_process_group()
        except Exception as e:  # exiting anyway; the code below reports the real status
            print(f"process group teardown failed: {e}", file=sys.stderr)
            code = code or 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def make_train_loader(dataset: Dataset, batch_size: int, seed: int = 0, num_workers: int = 0,
                      drop_last: bool = True, **kwargs) -> DataLoader:
    """Shuffled training loader; each rank reads its own shard through a DistributedSampler under DDP."""
    g = torch.Generator()
    g.manual_seed(seed)
    if num_workers > 0:
        kwargs.setdefault("worker_init_fn", seed_worker)
    if is_distributed():
        sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True,
                                     seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          drop_last=drop_last, generator=g, **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      drop_last=drop_last, generator=g, **kwargs)


def launch_torchrun(module: str, args: Sequence[str], nproc: int, env: dict | None = None,
                    timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run `python -m torch.distributed.run --standalone --nproc_per_node N -m module args...`; output captured."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)

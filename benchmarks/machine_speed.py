"""How fast this machine is right now, on two fixed workloads: timings from different days or machines compare
only next to these (a shared or throttled CPU can run the same code at half speed).

    python benchmarks/machine_speed.py
"""
from __future__ import annotations

import json
import time

import cv2
import numpy as np
import torch


def timed_ms(fn, repeats: int, reduce=np.median) -> float:
    """Milliseconds per call of `fn` after one warm-up call: `reduce` (median, or min for a best case) of `repeats`."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * float(reduce(times)), 3)


def machine_speed() -> dict:
    """Milliseconds (best of 5) for a small CNN training step on all threads and for OpenCV work on a 1-megapixel
    photo on one thread: the two kinds of work the pipeline and the card finder do."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, 2, 1),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(32, 3, 160, 112), torch.randint(0, 10, (32,))

    def train_steps():
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

    img = np.random.default_rng(0).integers(0, 255, (864, 1152, 3), np.uint8)

    def opencv_work():
        blur = cv2.GaussianBlur(img, (0, 0), 1.0)
        for _ in range(3):
            cv2.Canny(blur, 50, 150)
            cv2.Sobel(blur, cv2.CV_16S, 1, 0)

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        cv_ms = timed_ms(opencv_work, 5, min)
    finally:
        cv2.setNumThreads(threads)
    return {"torch_5_train_steps_ms": timed_ms(train_steps, 5, min), "torch_threads": torch.get_num_threads(),
            "opencv_1mp_ms_one_thread": cv_ms}


if __name__ == "__main__":
    print(json.dumps(machine_speed(), indent=2))

"""Card data throughput on one core: cards rendered/s, photos simulated/s, crops simulated/s → JSON."""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from cardlib.data import simulate_crop, simulate_photo, synthetic_catalogue
from cardlib.data.render import render_card


def rate(label: str, fn, items: list, seconds: float) -> dict:
    """Call fn on items until they run out or `seconds` pass; items per wall second and per CPU second."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    for it in tqdm(items, desc=label, disable=None):
        fn(it)
        n += 1
        if time.perf_counter() - t0 > seconds:
            break
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    # CPU seconds are the per-core cost; wall seconds also count time other processes took on a shared machine
    return {"items": n, "wall_s": round(dt, 3), "cpu_s": round(dc, 3), "per_wall_s": round(n / dt, 1),
            "per_cpu_s": round(n / dc, 1), "cpu_ms_each": round(1000 * dc / n, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_throughput.json"))
    ap.add_argument("--seconds", type=float, default=6.0, help="time budget per measurement")
    ap.add_argument("--photos", type=int, default=2000, help="photo count of the default data stage (for the estimate)")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # one core: the number a data worker gets
    cat = synthetic_catalogue(600, 6, 0.1, 0.1, seed=0)
    cards = cat.cards
    size = cat.card_size
    out = {"cards": rate("render", lambda c: render_card(c, size, seed=0), cards, args.seconds)}
    imgs = [cat.image(c.card_id) for c in tqdm(cards[:200], desc="reference images", disable=None)]
    jobs = [(imgs[i % 200], i, cards[i % 200].variant != "normal") for i in range(100000)]
    out["photos"] = rate("photos", lambda j: simulate_photo(j[0], j[1], (480, 640), 1.0, holo=j[2]), jobs, args.seconds)
    out["photos_with_neighbours"] = rate(
        "photos+neighbours", lambda j: simulate_photo(j[0], j[1], (480, 640), 1.0, neighbours=imgs[:3], holo=j[2]),
        jobs, args.seconds / 2)
    out["crops"] = rate("crops", lambda j: simulate_crop(j[0], j[1], (160, 112), 1.0, holo=j[2]), jobs, args.seconds)
    out["estimate"] = {"default_photos": args.photos,
                       "cpu_seconds_one_core": round(args.photos / out["photos"]["per_cpu_s"], 1),
                       "crops_cpu_seconds_one_core": round(args.photos / out["crops"]["per_cpu_s"], 1)}
    out["machine"] = {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                      "python": platform.python_version(), "opencv": cv2.__version__,
                      "note": "shared machine; load_avg above ~1 means other jobs took CPU during the run"}
    out["sizes"] = {"card": list(size), "photo": [480, 640], "crop": [160, 112]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

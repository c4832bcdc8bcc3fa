"""Train the card-mask network of `find_card` on simulated photos and measure it on others.

Training and held-out photos come from their own catalogue and photo seeds, never those of `benchmarks/find_card.py`
or of the outline ranker. Writes a JSON of the held-out mask IoU, the epoch losses and the time taken; with
--save-weights also the ONNX file the package ships (src/cardlib/find_card_mask.onnx). Refit the outline ranker
afterwards (`benchmarks/find_card_ranker.py --save-weights`): one of its features is the mask's agreement.

    OMP_NUM_THREADS=1 python benchmarks/find_card_mask.py --save-weights   # about 30 minutes
"""
from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

import torch
from tqdm import tqdm

from cardlib.data.camera import simulate_photo
from cardlib.data.catalogue import synthetic_catalogue
from cardlib.find_card_mask import MODEL
from cardlib.find_card_mask_fit import export_mask_net, mask_example, mask_iou, train_mask_net

REPO = Path(__file__).resolve().parents[1]
_CATALOGUES = {}


def example(job: tuple[int, int]):
    """One simulated photo (landscape or portrait, mostly at full difficulty) as a network example."""
    seed, i = job
    if seed not in _CATALOGUES:
        _CATALOGUES[seed] = synthetic_catalogue(n_cards=200, n_sets=4, reprint_fraction=0.1, variant_fraction=0.2,
                                                seed=seed)
    cat = _CATALOGUES[seed]
    card = cat.by_id(cat.ids[i % len(cat.ids)])
    size = (480, 640) if i % 3 else (640, 480)
    ph = simulate_photo(cat.image(card.card_id), seed=seed * 100003 + i, photo_size=size,
                        difficulty=1.0 if i % 5 else 0.5, holo=card.variant != "normal")
    return mask_example(ph.image, ph.corners)


def examples(seed: int, n: int, workers: int) -> list:
    with Pool(workers) as pool:
        return list(tqdm(pool.imap(example, [(seed, i) for i in range(n)], chunksize=16), total=n,
                         desc=f"photos (seed {seed})", disable=None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=8000)
    ap.add_argument("--held-out", type=int, default=300)
    ap.add_argument("--train-seed", type=int, default=3000)
    ap.add_argument("--held-out-seed", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--save-weights", action="store_true", help=f"write the network to {MODEL.name}")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "find_card_mask.json"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    train = examples(a.train_seed, a.train, a.workers)
    held = examples(a.held_out_seed, a.held_out, a.workers)
    t1 = time.perf_counter()
    net, losses = train_mask_net(train, epochs=a.epochs)
    t2 = time.perf_counter()
    result = {"train": {"seed": a.train_seed, "n": a.train}, "epochs": a.epochs,
              "epoch_losses": [round(v, 4) for v in losses],
              "held_out": {"seed": a.held_out_seed, "n": a.held_out, "mask_iou": round(mask_iou(net, held), 4)},
              "params": sum(p.numel() for p in net.parameters()), "torch_threads": torch.get_num_threads(),
              "seconds": {"photos": round(t1 - t0, 1), "training": round(t2 - t1, 1)}}
    if a.save_weights:
        export_mask_net(net, MODEL)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

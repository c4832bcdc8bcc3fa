"""Fit the outline ranker of `find_card` on simulated photos and measure it on others.

Training and held-out photos come from their own catalogue and photo seeds, never those of
`benchmarks/find_card.py`. Writes a JSON of pick rates on both: how often the rules' outline, the ranker's and any
candidate at all match the card (IoU >= 0.9); with --save-weights also the weights the package ships
(src/cardlib/find_card_ranker.json).

    OMP_NUM_THREADS=1 python benchmarks/find_card_ranker.py --train 2400 --held-out 800 --save-weights
"""
from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cardlib.data.camera import draw_neighbours, simulate_photo
from cardlib.data.catalogue import synthetic_catalogue
from cardlib.find_card_rank import WEIGHTS
from cardlib.find_card_rank_fit import fit_ranker, pick_rates, ranking_example, save_weights

REPO = Path(__file__).resolve().parents[1]
NEIGHBOURS_EVERY = 8


def example(job: tuple[int, int]):
    """One photo's ranking example; every NEIGHBOURS_EVERY-th photo has one or two other cards beside the card (the
    camera aimed at it), so the ranker learns that a clean card off-centre is not the one meant."""
    seed, i = job
    cat = catalogue(seed)
    card = cat.by_id(cat.ids[i % len(cat.ids)])
    rng = np.random.default_rng([seed, i])
    near = draw_neighbours(cat.ids, card.card_id, rng, count=int(rng.integers(1, 3))) if i % NEIGHBOURS_EVERY == 0 \
        else []
    ph = simulate_photo(cat.image(card.card_id), seed=seed * 100003 + i, photo_size=(480, 640), difficulty=1.0,
                        neighbours=[cat.image(c) for c in near], holo=card.variant != "normal")
    return ranking_example(ph.image, ph.corners)


_CATALOGUES = {}


def catalogue(seed: int):
    if seed not in _CATALOGUES:
        _CATALOGUES[seed] = synthetic_catalogue(n_cards=200, n_sets=4, reprint_fraction=0.1, variant_fraction=0.2,
                                                seed=seed)
    return _CATALOGUES[seed]


def examples(seed: int, n: int, workers: int) -> list:
    with Pool(workers) as pool:
        return list(tqdm(pool.imap(example, [(seed, i) for i in range(n)], chunksize=8), total=n,
                         desc=f"photos (seed {seed})", disable=None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=2400)
    ap.add_argument("--held-out", type=int, default=800)
    ap.add_argument("--train-seed", type=int, default=1000)
    ap.add_argument("--held-out-seed", type=int, default=2000)
    ap.add_argument("--weight-decay", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=8, help="tanh units beside the linear score (0: linear)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--save-weights", action="store_true", help=f"write the fitted weights to {WEIGHTS.name}")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "find_card_ranker.json"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    train = examples(a.train_seed, a.train, a.workers)
    held = examples(a.held_out_seed, a.held_out, a.workers)
    weights = fit_ranker(train, a.weight_decay, a.hidden)
    weights.update(train_seed=a.train_seed, difficulty=1.0, photo_size=[480, 640], neighbours_every=NEIGHBOURS_EVERY)
    if a.save_weights:
        save_weights(weights, WEIGHTS)
    result = {"train": {"seed": a.train_seed, "n": a.train, **pick_rates(train, weights)},
              "held_out": {"seed": a.held_out_seed, "n": a.held_out, **pick_rates(held, weights)},
              "held_out_with_neighbours": pick_rates(held[::NEIGHBOURS_EVERY], weights),
              "held_out_alone": pick_rates([e for i, e in enumerate(held) if i % NEIGHBOURS_EVERY], weights),
              "linear_coef": dict(zip(weights["features"], [round(c, 3) for c in weights["coef"]])),
              "seconds": round(time.perf_counter() - t0, 1)}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

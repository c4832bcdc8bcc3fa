"""Train/novel card splits (artwork groups never straddle them) and the per-photo plan of the data stage."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .catalogue import Catalogue, validate_card_id
from .render import stable_seed


@dataclass(frozen=True)
class Splits:
    """Card ids seen in training, card ids never seen (novel), and the gallery (every card)."""

    train_cards: list[str]
    novel_cards: list[str]
    gallery: list[str]
    seed: int
    novel_fraction: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Splits":
        return cls(list(d["train_cards"]), list(d["novel_cards"]), list(d["gallery"]), int(d["seed"]),
                   float(d["novel_fraction"]))


def make_splits(catalogue: Catalogue, novel_fraction: float, seed: int) -> Splits:
    """Hold out whole artwork groups (a reprint of a training card is not novel) until ~novel_fraction of cards."""
    if not 0.0 < novel_fraction < 1.0:
        raise ValueError(f"novel_fraction must be in (0, 1), got {novel_fraction}")
    groups = catalogue.groups()
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    target = novel_fraction * len(catalogue)
    novel: set[str] = set()
    n = 0
    for i in order:
        size = len(groups[keys[i]])
        # take the group if that brings the count closer to the target (big groups may be skipped)
        if abs(n + size - target) < abs(n - target):
            novel.update(groups[keys[i]])
            n += size
    ids = catalogue.ids
    train = [c for c in ids if c not in novel]
    novel_ids = [c for c in ids if c in novel]
    if not train or not novel_ids:
        raise ValueError(f"split of {len(ids)} cards in {len(groups)} artwork groups with novel_fraction={novel_fraction} "
                         f"leaves {len(train)} training and {len(novel_ids)} novel cards; both need at least one")
    return Splits(train, novel_ids, list(ids), int(seed), float(novel_fraction))


def photo_plan(splits: Splits, photos_train: int, photos_val: int, photos_test: int, seed: int) -> list[dict]:
    """One row per photo to simulate: training cards get train/val/test photos; novel cards val and test only."""
    if min(photos_train, photos_val, photos_test) < 0:
        raise ValueError("photo counts must be >= 0")
    rows = []
    for novel, cards in ((False, splits.train_cards), (True, splits.novel_cards)):
        counts = (("val", photos_val), ("test", photos_test)) if novel else \
            (("train", photos_train), ("val", photos_val), ("test", photos_test))
        for card_id in cards:
            for split, n in counts:
                for i in range(n):
                    photo_id = validate_card_id(f"{card_id}__{split}{i:03d}")
                    rows.append({"photo_id": photo_id, "card_id": card_id, "split": split, "novel": novel,
                                 "seed": stable_seed("photo", seed, photo_id)})
    return rows

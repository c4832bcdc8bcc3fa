"""torch Datasets over crops and reference images, seeded loaders, and a hard-negative batch sampler."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .camera import simulate_crop
from .catalogue import Catalogue
from .render import stable_seed

Augment = Callable[[np.ndarray], np.ndarray]  # RGB uint8 -> RGB uint8


def read_rgb(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an image file; a clear error when it cannot be decoded."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _resolve(root: Path, rel: str) -> Path:
    p = (root / rel).resolve()
    if root.resolve() not in p.parents:
        raise ValueError(f"image path {rel!r} escapes the data root {root}")
    return p


def _row_path(row: dict) -> str:
    rel = row.get("path", row.get("crop"))
    if not rel:
        raise KeyError(f"row {row.get('photo_id', row.get('card_id'))!r} has neither 'path' nor 'crop'")
    return rel


def default_labels(catalogue: Catalogue) -> dict[str, int]:
    """card id -> class index in catalogue order: the one label map every dataset of a run shares."""
    return {cid: i for i, cid in enumerate(catalogue.ids)}


CACHE_MB = 1024  # decoded crops of a dataset up to this size stay in memory: each epoch reads them again otherwise


class CropDataset(Dataset):
    """(crop tensor, label) from rows with `card_id` and an image `path` (or the data stage's `crop`) under `root`.

    Decoded images are kept in memory after the first read (when they fit in CACHE_MB at the model's input size):
    training reads every crop once an epoch."""

    def __init__(self, rows: Sequence[dict], root: str | Path, preprocess, label_of: dict[str, int],
                 augment: Optional[Augment] = None):
        self.rows, self.root, self.preprocess, self.augment = list(rows), Path(root), preprocess, augment
        missing = sorted({r["card_id"] for r in self.rows} - set(label_of))
        if missing:
            raise KeyError(f"rows name cards without a label: {missing[:5]}")
        self.labels = [int(label_of[r["card_id"]]) for r in self.rows]
        self.paths = [_resolve(self.root, _row_path(r)) for r in self.rows]
        size_mb = len(self.rows) * preprocess.height * preprocess.width * 3 / 2**20
        self._decoded: Optional[dict[int, np.ndarray]] = {} if size_mb <= CACHE_MB else None

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> np.ndarray:
        img = self._decoded.get(i) if self._decoded is not None else None
        if img is None:
            img = read_rgb(self.paths[i])
            if self._decoded is not None:
                self._decoded[i] = img
        return self.augment(img) if self.augment else img

    def __getitem__(self, i: int):
        return self.preprocess(self.image(i)), self.labels[i]


class ReferenceTensors:
    """Each card's reference image as the model's input tensor, made once (every epoch pairs photos with them)."""

    def __init__(self, catalogue: Catalogue, preprocess):
        self.catalogue, self.preprocess, self._tensors = catalogue, preprocess, {}

    def __call__(self, card_id: str) -> torch.Tensor:
        t = self._tensors.get(card_id)
        if t is None:
            t = self._tensors[card_id] = self.preprocess(self.catalogue.image(card_id))
        return t


class ReferenceDataset(Dataset):
    """(reference image tensor, label) for each card in `ids` (default: the whole catalogue)."""

    def __init__(self, catalogue: Catalogue, preprocess, ids: Optional[Sequence[str]] = None,
                 label_of: Optional[dict[str, int]] = None, augment: Optional[Augment] = None):
        self.catalogue, self.preprocess, self.augment = catalogue, preprocess, augment
        self.ids = list(ids) if ids is not None else catalogue.ids
        label_of = label_of or default_labels(catalogue)
        self.labels = [int(label_of[c]) for c in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        img = self.catalogue.image(self.ids[i])
        return self.preprocess(self.augment(img) if self.augment else img), self.labels[i]


class PairDataset(Dataset):
    """(photo crop, its card's reference image, label) for contrastive photo↔reference training."""

    def __init__(self, crops: CropDataset, catalogue: Catalogue):
        self.crops, self.catalogue = crops, catalogue
        self.card_ids = [r["card_id"] for r in crops.rows]
        self.labels = crops.labels
        self.reference = ReferenceTensors(catalogue, crops.preprocess)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int):
        crop, label = self.crops[i]
        return crop, self.reference(self.card_ids[i]), label


class SimulatedCropDataset(Dataset):
    """(fresh simulated crop, reference, label): `n_per_card` crops per card, new ones each epoch via `set_epoch`."""

    def __init__(self, catalogue: Catalogue, ids: Sequence[str], preprocess, label_of: dict[str, int],
                 n_per_card: int = 1, difficulty: float = 1.0, seed: int = 0):
        self.catalogue, self.ids, self.preprocess = catalogue, list(ids), preprocess
        self.labels = [int(label_of[c]) for c in self.ids for _ in range(n_per_card)]
        self.n, self.difficulty, self.seed, self.epoch = n_per_card, difficulty, seed, 0
        self.reference = ReferenceTensors(catalogue, preprocess)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids) * self.n

    def __getitem__(self, i: int):
        cid = self.ids[i // self.n]
        ref = self.catalogue.image(cid)
        holo = self.catalogue.by_id(cid).variant != "normal"
        crop, _ = simulate_crop(ref, stable_seed("simcrop", self.seed, self.epoch, i), (self.preprocess.height,
                                self.preprocess.width), self.difficulty, holo=holo)
        return self.preprocess(crop), self.reference(cid), self.labels[i]


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: numpy and random follow torch's per-worker seed (PyTorch reproducibility recipe)."""
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                batch_sampler: Optional[Sampler] = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order and worker seeds follow `seed`; a `batch_sampler` replaces batch_size/shuffle."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    common = dict(num_workers=num_workers, worker_init_fn=seed_worker, generator=g,
                  persistent_workers=num_workers > 0)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **common)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches that keep an artwork group's cards together (reprints, foil variants: hard negatives).

    Each epoch every index appears once; a card appears at most once per batch, so in-batch negatives are
    never the same card. `groups[i]` and `labels[i]` describe dataset item i.
    """

    def __init__(self, groups: Sequence[str], labels: Sequence[int], batch_size: int, seed: int = 0,
                 drop_last: bool = False):
        if len(groups) != len(labels):
            raise ValueError(f"groups ({len(groups)}) and labels ({len(labels)}) must have one entry per item")
        if batch_size < 2:
            raise ValueError("batch_size must be >= 2")
        self.groups, self.labels = list(groups), [int(v) for v in labels]
        self.batch_size, self.seed, self.drop_last, self.epoch = int(batch_size), int(seed), drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng(stable_seed("groupbatch", self.seed, self.epoch))
        by_label: dict[int, list[int]] = {}
        for i, lab in enumerate(self.labels):
            by_label.setdefault(lab, []).append(i)
        for idx in by_label.values():
            rng.shuffle(idx)
        group_of = {lab: self.groups[idx[0]] for lab, idx in by_label.items()}
        batches: list[list[int]] = []
        for r in range(max(len(v) for v in by_label.values())):
            # pass r: the r-th item of every card, so no card repeats within a pass
            units: dict[str, list[int]] = {}
            for lab, idx in by_label.items():
                if r < len(idx):
                    units.setdefault(group_of[lab], []).append(idx[r])
            chunks = []
            for key in sorted(units):
                members = units[key]
                chunks += [members[k:k + self.batch_size] for k in range(0, len(members), self.batch_size)]
            open_batches: list[list[int]] = []
            for j in rng.permutation(len(chunks)):
                chunk = chunks[j]
                home = next((b for b in open_batches if len(b) + len(chunk) <= self.batch_size), None)
                if home is None:
                    open_batches.append(list(chunk))
                else:
                    home.extend(chunk)
            batches += open_batches
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return [batches[k] for k in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())

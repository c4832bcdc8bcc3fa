"""The gallery: one reference embedding + perceptual hash per known card, and the embedders that fill it."""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm

from .store import atomic_write_bytes
from .data.catalogue import validate_card_id
from .hashing import HASH_BYTES, card_hashes, hash_signs
from .preprocess import Preprocess

GALLERY_FORMAT = 1
HASH_ONLY_MODEL_ID = "hash-only"  # a gallery built without an embedder: the perceptual-hash baseline


@runtime_checkable
class Embedder(Protocol):
    """RGB uint8 5:7 crops → float32 (N, D) L2-normalised embeddings; knows its preprocessing and identity."""

    preprocess: Preprocess
    model_id: str

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OnnxEmbedder:
    """An exported embedding graph on ONNX Runtime (CPU); its identity is the file's sha256."""

    def __init__(self, onnx_path: str | os.PathLike, preprocess: Preprocess | None = None, batch_size: int = 64,
                 threads: int | None = None):
        from .export import onnx_metadata, ort_session

        self.session = ort_session(onnx_path, threads=threads)
        meta = onnx_metadata(self.session)
        stored = Preprocess.from_dict(json.loads(meta["preprocess"])) if "preprocess" in meta else None
        if preprocess is not None and stored is not None and preprocess != stored:
            raise ValueError(f"{Path(onnx_path).name} was exported for {stored}, not {preprocess}")
        self.preprocess = preprocess or stored or Preprocess()
        self.model_id = "onnx-sha256:" + file_sha256(onnx_path)
        batch = self.session.get_inputs()[0].shape[0]
        self.static_batch = batch if isinstance(batch, int) else None  # Hailo-bound graphs often have batch 1 baked in
        self.batch_size = self.static_batch or batch_size

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        from .export import onnx_embed

        out = []
        for i in range(0, len(crops), self.batch_size):
            x = self.preprocess.normalize(self.preprocess.to_uint8_nhwc(crops[i : i + self.batch_size]))
            n = len(x)
            if self.static_batch and n < self.static_batch:  # pad the last chunk up to the baked-in batch size
                x = np.concatenate([x, np.zeros((self.static_batch - n, *x.shape[1:]), np.float32)])
            out.append(onnx_embed(self.session, x)[:n])
        return _l2(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)


class TorchEmbedder:
    """A PyTorch embedding model in eval mode; its identity is a sha256 over its state_dict."""

    def __init__(self, model: torch.nn.Module, preprocess: Preprocess, device: str | torch.device = "cpu",
                 batch_size: int = 64, model_id: str | None = None):
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model_id = model_id or self._state_sha256()

    def _state_sha256(self) -> str:
        h = hashlib.sha256()
        for name, t in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return "torch-sha256:" + h.hexdigest()

    @torch.inference_mode()
    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(crops), self.batch_size):
            y = self.model(self.preprocess.batch(crops[i : i + self.batch_size]).to(self.device))
            y = y[0] if isinstance(y, (tuple, list)) else y
            out.append(y.float().reshape(len(y), -1).cpu().numpy())
        return _l2(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)


@dataclass
class Gallery:
    """Card ids, names, metadata, L2-normalised embeddings (N, D) float32, hashes (N, 16) uint8, model identity."""

    card_ids: list[str]
    names: list[str]
    metadata: list[dict]
    embeddings: np.ndarray
    hashes: np.ndarray
    model_id: str
    preprocess: dict
    _index: dict = field(init=False, repr=False)
    _signs: np.ndarray | None = field(init=False, repr=False, default=None)

    def __post_init__(self):
        self.card_ids = [validate_card_id(c) for c in self.card_ids]
        n = len(self.card_ids)
        self._index = {c: i for i, c in enumerate(self.card_ids)}
        if len(self._index) != n:
            dup = sorted(c for c, k in Counter(self.card_ids).items() if k > 1)
            raise ValueError(f"duplicate card ids in gallery: {dup[:10]}")
        self.names, self.metadata = list(self.names), [dict(m) for m in self.metadata]
        self.embeddings = _l2(self.embeddings) if np.asarray(self.embeddings).size else np.zeros((n, 0), np.float32)
        self.hashes = np.ascontiguousarray(self.hashes, np.uint8).reshape(-1, HASH_BYTES)
        if not (len(self.names) == len(self.metadata) == len(self.embeddings) == len(self.hashes) == n):
            raise ValueError("gallery fields disagree in length: ids, names, metadata, embeddings and hashes must match")
        self.preprocess = json.loads(json.dumps(self.preprocess))  # tuples → lists: compare equal after a load
        self._signs = None

    def __len__(self) -> int:
        return len(self.card_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def index_of(self, card_id: str) -> int:
        if card_id not in self._index:
            raise KeyError(f"card {card_id!r} is not in the gallery")
        return self._index[card_id]

    def __contains__(self, card_id: str) -> bool:
        return card_id in self._index

    @property
    def hash_signs(self) -> np.ndarray:
        """(N, 128) ±1 float32 hash codes, kept in memory so hash search is one matmul."""
        if self._signs is None:
            self._signs = hash_signs(self.hashes)
        return self._signs

    def search(self, query_emb: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-k cards by cosine: (idx, scores), each (Nq, k) (or (k,) for one 1-D query), best first."""
        if self.dim == 0:
            raise ValueError("this gallery holds hashes only (built without an embedder); use hash search")
        single = np.ndim(query_emb) == 1
        q = _l2(np.atleast_2d(query_emb))
        if q.shape[1] != self.dim:
            raise ValueError(f"query embeddings have dimension {q.shape[1]}, gallery has {self.dim}")
        scores = q @ self.embeddings.T
        k = min(int(k), len(self))
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(-scores, part, axis=1).argsort(axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
        top = np.take_along_axis(scores, idx, axis=1)
        return (idx[0], top[0]) if single else (idx, top)

    def append(self, other: "Gallery") -> "Gallery":
        """Add another gallery's cards (a new set) in place; same model and preprocessing, no repeated ids."""
        if other.model_id != self.model_id:
            raise ValueError(f"cannot append a gallery built with {other.model_id!r} to one built with {self.model_id!r}")
        if other.preprocess != self.preprocess:
            raise ValueError(f"cannot append: preprocessing differs ({other.preprocess} vs {self.preprocess})")
        dup = sorted(set(other.card_ids) & set(self.card_ids))
        if dup:
            raise ValueError(f"cannot append: {len(dup)} card ids already in the gallery, e.g. {dup[:5]}")
        merged = Gallery(self.card_ids + other.card_ids, self.names + other.names, self.metadata + other.metadata,
                         np.concatenate([self.embeddings, other.embeddings]), np.concatenate([self.hashes, other.hashes]),
                         self.model_id, self.preprocess)
        self.__dict__.update(merged.__dict__)
        return self

    def subset(self, card_ids: Sequence[str]) -> "Gallery":
        """A new gallery holding only `card_ids` (e.g. without a set, to test unknown-card rejection)."""
        idx = [self._index[c] for c in card_ids]
        return Gallery([self.card_ids[i] for i in idx], [self.names[i] for i in idx], [self.metadata[i] for i in idx],
                       self.embeddings[idx], self.hashes[idx], self.model_id, self.preprocess)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write gallery.npz (float16 embeddings, hashes) then gallery.json (ids, metadata, identity, npz sha256)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, embeddings=self.embeddings.astype(np.float16), hashes=self.hashes)
        arrays = buf.getvalue()
        atomic_write_bytes(d / "gallery.npz", arrays)
        doc = {"format": GALLERY_FORMAT, "model_id": self.model_id, "preprocess": self.preprocess, "dim": self.dim,
               "npz_sha256": hashlib.sha256(arrays).hexdigest(),
               "cards": [{"id": c, "name": n, "metadata": m} for c, n, m in zip(self.card_ids, self.names, self.metadata)]}
        atomic_write_bytes(d / "gallery.json", json.dumps(doc, indent=1, ensure_ascii=False).encode())
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Gallery":
        d = Path(directory)
        for name in ("gallery.json", "gallery.npz"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"not a gallery directory (no {name}): {d}")
        doc = json.loads((d / "gallery.json").read_text())
        if doc.get("format") != GALLERY_FORMAT:
            raise ValueError(f"{d}: gallery format {doc.get('format')!r}, this cardlib reads {GALLERY_FORMAT}")
        arrays = (d / "gallery.npz").read_bytes()
        if hashlib.sha256(arrays).hexdigest() != doc["npz_sha256"]:
            raise ValueError(f"{d}: gallery.npz does not match gallery.json (interrupted or mixed-up save)")
        with np.load(io.BytesIO(arrays)) as z:
            emb, hashes = z["embeddings"].astype(np.float32), z["hashes"]
        cards = doc["cards"]
        return cls([c["id"] for c in cards], [c["name"] for c in cards], [c["metadata"] for c in cards],
                   emb.reshape(len(cards), int(doc["dim"])), hashes, doc["model_id"], doc["preprocess"])


def build_gallery(reference_images: Mapping[str, np.ndarray], embedder: Embedder | None,
                  metadata: Mapping[str, dict] | None = None, model_id: str | None = None,
                  preprocess: Preprocess | None = None, batch_size: int = 64) -> Gallery:
    """Embed and hash full-card reference images (resized through Preprocess, never rectified) into a Gallery.

    embedder=None builds a hash-only gallery (the perceptual-hash baseline); model_id defaults to the embedder's.
    """
    if embedder is not None and preprocess is not None and preprocess != embedder.preprocess:
        raise ValueError(f"preprocess {preprocess} disagrees with the embedder's {embedder.preprocess}")
    pre = embedder.preprocess if embedder is not None else (preprocess or Preprocess())
    model_id = model_id or (embedder.model_id if embedder is not None else HASH_ONLY_MODEL_ID)
    metadata = metadata or {}
    ids = [validate_card_id(c) for c in reference_images]
    meta = [dict(metadata.get(c, {})) for c in ids]
    json.dumps(meta)  # fail here, not at save time, on metadata JSON cannot hold
    names = [str(m.get("name", c)) for c, m in zip(ids, meta)]
    embs, hashes = [], []
    for i in tqdm(range(0, len(ids), batch_size), desc="gallery", unit="batch", disable=None):
        crops = [pre.resize_uint8(reference_images[c]) for c in ids[i : i + batch_size]]
        hashes.append(card_hashes(crops))
        if embedder is not None:
            embs.append(embedder(crops))
    emb = np.concatenate(embs) if embs else np.zeros((len(ids), 0), np.float32)
    hsh = np.concatenate(hashes) if hashes else np.zeros((0, HASH_BYTES), np.uint8)
    return Gallery(ids, names, meta, emb, hsh, model_id, pre.to_dict())


def catalogue_gallery(catalogue, embedder: Embedder) -> Gallery:
    """Every card of a catalogue (its reference images, name, set and number) embedded by `embedder`: the gallery
    the evaluation, the Hailo stage and `cardlib gallery build` search."""
    meta = {c.card_id: {"name": c.name, "set": c.set_id, "number": c.collector_number} for c in catalogue}
    return build_gallery({c: catalogue.image(c) for c in catalogue.ids}, embedder, meta)

"""The inference bundle: ONNX student + gallery (embeddings and hashes) + fusion weights + unknown threshold."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from cardlib.gallery import Gallery, OnnxEmbedder
from cardlib.recognize import FusedMatcher, FusionWeights
from cardlib.store import atomic_write_text

MODEL, GALLERY, MATCHER = "model.onnx", "gallery", "matcher.json"


def save_matcher_config(gallery_dir: str | Path, weights: FusionWeights, unknown_threshold: Optional[float]) -> Path:
    """Fusion weights and the open-set threshold live beside the gallery they were fitted for."""
    path = Path(gallery_dir) / MATCHER
    thr = None if unknown_threshold is None or unknown_threshold == float("-inf") else float(unknown_threshold)
    atomic_write_text(path, json.dumps({"weights": weights.to_dict(), "unknown_threshold": thr}, indent=2))
    return path


def load_matcher(model: str | Path, gallery_dir: str | Path, method: str = "fused") -> FusedMatcher:
    """A FusedMatcher from an ONNX model and a gallery folder (with its matcher.json when there is one)."""
    gallery = Gallery.load(gallery_dir)
    embedder = None if method == "hash" else OnnxEmbedder(model, None)
    cfg_path = Path(gallery_dir) / MATCHER
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    weights = FusionWeights.from_dict(cfg["weights"]) if "weights" in cfg else None
    return FusedMatcher(gallery, embedder, weights, method, cfg.get("unknown_threshold"))


def save_bundle(out_dir: str | Path, onnx_path: str | Path, gallery: Gallery, weights: FusionWeights,
                unknown_threshold: Optional[float], info: Optional[dict] = None) -> Path:
    """Write model.onnx, gallery/ (+ matcher.json) and bundle.json (preprocessing, model id, card count)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, out / MODEL)
    gallery.save(out / GALLERY)
    save_matcher_config(out / GALLERY, weights, unknown_threshold)
    atomic_write_text(out / "bundle.json", json.dumps({"model": MODEL, "gallery": GALLERY, "cards": len(gallery),
                                                       "model_id": gallery.model_id, "preprocess": gallery.preprocess,
                                                       **(info or {})}, indent=2))
    return out


def load_bundle(bundle_dir: str | Path, method: str = "fused") -> FusedMatcher:
    d = Path(bundle_dir)
    if not (d / "bundle.json").is_file():
        raise FileNotFoundError(f"{d} is not an inference bundle (no bundle.json)")
    return load_matcher(d / MODEL, d / GALLERY, method)

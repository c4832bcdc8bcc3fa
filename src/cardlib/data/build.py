"""The data stage: catalogue → splits → simulated photos → card crops (through find_card) → manifest."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from cardlib.data.camera import draw_neighbours, simulate_crop, simulate_photo
from cardlib.data.catalogue import Catalogue, scans_catalogue, scans_catalogue_from_store, synthetic_catalogue
from cardlib.data.render import stable_seed
from cardlib.data.splits import Splits, make_splits, photo_plan
from cardlib.store import atomic_write_text

MANIFEST, CATALOGUE, SPLITS = "manifest.jsonl", "catalogue.json", "splits.json"


@dataclass
class DataBuild:
    """What the data stage made: where, how many, and what was excluded (and why)."""

    root: Path
    catalogue: Catalogue
    splits: Splits
    rows: list[dict]
    excluded: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict:
        by = Counter((r["split"], "novel" if r["novel"] else "seen") for r in self.rows)
        return {f"{s}_{n}": c for (s, n), c in sorted(by.items())}

    def found_rate(self) -> Optional[float]:
        rows = [r for r in self.rows if r.get("found") is not None]
        return sum(r["found"] for r in rows) / len(rows) if rows else None


def load_catalogue(params, store=None, cache_dir: Optional[Path] = None) -> Catalogue:
    d = params.data
    size = tuple(d.card_size)
    if d.source == "synthetic":
        return synthetic_catalogue(d.n_cards, d.n_sets, d.reprint_fraction, d.variant_fraction, params.run.seed,
                                   card_size=size)
    if d.scans_dir.startswith("s3://"):
        from cardlib.store import open_store, parse_s3_uri

        bucket, prefix = parse_s3_uri(d.scans_dir)
        src = open_store(f"s3://{bucket}", params.store.region)
        return scans_catalogue_from_store(src, prefix, cache_dir or Path("scans-cache"), d.metadata_dir,
                                          card_size=size)
    return scans_catalogue(d.scans_dir, d.metadata_dir, card_size=size)


def _rel(p: Path, root: Path) -> str:
    return p.relative_to(root).as_posix()


def _save_rgb(path: Path, img: np.ndarray, quality: int = 92) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write {path}")


def make_crop(photo, input_size: tuple[int, int], mode: str, seed: int, difficulty: float, ref: np.ndarray,
              holo: bool, gallery_bits: Optional[np.ndarray] = None) -> tuple[np.ndarray, dict]:
    """The crop every model and baseline sees: find_card on the photo, or a simulated finder crop.

    With `gallery_bits` (the references' hashes), the finder offers alternative outlines and the one that shows a
    gallery card is kept, as `recognize` does (`gallery_check`); `finder_iou` records the finder's own choice."""
    if mode == "simulated":
        crop, factors = simulate_crop(ref, seed, input_size, difficulty, holo=holo)
        return crop, {"found": True, "factors": factors}
    from cardlib.find_card import corner_error, find_card, quad_iou
    from cardlib.hashing import GALLERY_ALTERNATIVES, gallery_check

    cands = find_card(photo.image, out_size=input_size, max_cards=1,
                      alternatives=0 if gallery_bits is None else GALLERY_ALTERNATIVES)
    if not cands:  # recognition falls back to the whole photo; evaluation does exactly the same
        crop = cv2.resize(photo.image, (input_size[1], input_size[0]), interpolation=cv2.INTER_AREA)
        return crop, {"found": False, "iou": 0.0, "finder_iou": 0.0, "corner_error": None, "confidence": 0.0}
    k = gallery_check(cands, gallery_bits)[0] if len(cands) > 1 else 0
    c = cands[k]
    err = float(corner_error(c.corners, photo.corners))
    return c.crop, {"found": True, "iou": round(float(quad_iou(c.corners, photo.corners)), 4),
                    "finder_iou": round(float(quad_iou(cands[0].corners, photo.corners)), 4), "alternative": k,
                    "corner_error": round(err, 5),
                    "orientation_ok": bool(corner_error(c.corners, photo.corners, orientation_agnostic=False) <= err + 1e-9),
                    "confidence": round(float(c.confidence), 4), "upright": c.upright,
                    "corners_found": np.round(c.corners, 2).tolist()}


_JOB: Optional[dict] = None  # what photo workers need: rendered references, data params, output root


def _init_worker(job: Optional[dict]) -> None:
    global _JOB
    _JOB = job
    if job is not None and job["data"].crops == "find_card":  # the gallery recognize will search: all references
        from cardlib.hashing import card_hashes
        from cardlib.preprocess import Preprocess

        h, w = job["data"].input_size
        job["gallery_bits"] = card_hashes(Preprocess(height=h, width=w).resize_uint8(r) for r in job["refs"].values())


def _photo_job(row: dict) -> dict:
    """Simulate one photo, cut its crop, write both; returns the manifest row."""
    refs, d, root = _JOB["refs"], _JOB["data"], _JOB["root"]
    card_id = row["card_id"]
    rng = np.random.default_rng(row["seed"])
    holo = _JOB["variant"][card_id] != "normal"
    neighbours = [refs[c] for c in draw_neighbours(list(refs), card_id, rng)]
    photo = simulate_photo(refs[card_id], row["seed"], tuple(d.photo_size), d.difficulty, neighbours=neighbours,
                           holo=holo)
    crop, found = make_crop(photo, tuple(d.input_size), d.crops, stable_seed("crop", row["seed"]), d.difficulty,
                            refs[card_id], holo, _JOB.get("gallery_bits"))
    crop_path = root / "crops" / f"{row['photo_id']}.png"
    _save_rgb(crop_path, crop)
    rec = {**row, "crop": _rel(crop_path, root), "factors": found.pop("factors", photo.factors),
           "corners": np.round(photo.corners, 2).tolist(), **found}
    if row["split"] != "train":  # whole photos kept for evaluation, failure galleries and recognize tests
        photo_path = root / "photos" / f"{row['photo_id']}.jpg"
        _save_rgb(photo_path, photo.image)
        rec["photo"] = _rel(photo_path, root)
    return rec


def build_dataset(params, out_dir: str | Path, store=None, parallel: bool = True) -> DataBuild:
    """Make references, photos, crops and the manifest under out_dir; corrupt scans are excluded and listed."""
    d, seed = params.data, params.run.seed
    root = Path(out_dir)
    catalogue = load_catalogue(params, store, root / "scans-cache")
    excluded = catalogue.check_images()
    if excluded:
        catalogue = catalogue.drop([cid for cid, _ in excluded])
    if len(catalogue) < 2:
        raise ValueError(f"the catalogue has {len(catalogue)} usable card(s); at least 2 are needed")
    splits = make_splits(catalogue, d.novel_fraction, seed)
    plan = photo_plan(splits, d.photos_train, d.photos_val, d.photos_test, seed)

    refs = {}
    for cid in tqdm(catalogue.ids, desc="references", disable=None):
        refs[cid] = catalogue.image(cid)
        _save_rgb(root / "references" / f"{cid}.png", refs[cid])
    job = {"refs": refs, "variant": {c.card_id: c.variant for c in catalogue}, "data": d, "root": root}
    workers = max(1, min(os.cpu_count() or 1, len(plan) // 64)) if parallel else 1
    if workers > 1:  # photos are independent; spawned workers (OpenCV's thread pool does not survive a fork)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(job,)) as pool:
            rows = list(tqdm(pool.map(_photo_job, plan, chunksize=16), total=len(plan), desc="photos", disable=None))
    else:
        _init_worker(job)
        rows = [_photo_job(row) for row in tqdm(plan, desc="photos", disable=None)]
        _init_worker(None)

    catalogue.save_json(root / CATALOGUE)
    atomic_write_text(root / SPLITS, json.dumps(splits.to_dict(), indent=1))
    atomic_write_text(root / MANIFEST, "".join(json.dumps(r) + "\n" for r in rows))
    return DataBuild(root, catalogue, splits, rows, excluded)


def load_manifest(root: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(root) / MANIFEST).read_text().splitlines() if line.strip()]


def rows_for(rows: list[dict], split: str, novel: Optional[bool] = None) -> list[dict]:
    return [r for r in rows if r["split"] == split and (novel is None or r["novel"] == novel)]


FINDER_SLICES = ("upside_down", "sleeve", "blur", "occlusion", "glare", "angle_deg", "background", "scale", "cropped",
                 "neighbours")


def finder_quality(rows: list[dict], iou_min: float = 0.9) -> Optional[dict]:
    """Found rate (IoU ≥ iou_min with the true quad), corner error and orientation accuracy, overall and by factor."""
    from cardlib.evaluate import bucket

    rows = [r for r in rows if "iou" in r]
    if not rows:
        return None

    def score(rs: list[dict]) -> dict:
        errs = [r["corner_error"] for r in rs if r.get("corner_error") is not None]
        orient = [r["orientation_ok"] for r in rs if r.get("iou", 0) >= iou_min]
        return {"n": len(rs), "found_rate": round(sum(r["iou"] >= iou_min for r in rs) / len(rs), 4),
                "found_rate_before_gallery_check": round(sum(r.get("finder_iou", r["iou"]) >= iou_min for r in rs) / len(rs), 4),
                "detected_rate": round(sum(bool(r["found"]) for r in rs) / len(rs), 4),
                "mean_corner_error": round(float(np.mean(errs)), 5) if errs else None,
                "orientation_accuracy": round(float(np.mean(orient)), 4) if orient else None}

    by_factor = {}
    for name in FINDER_SLICES:
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(f"{name}={bucket(name, r['factors'].get(name))}", []).append(r)
        by_factor.update({k: score(v) for k, v in sorted(groups.items())})
    return {"overall": score(rows), "by_factor": by_factor}

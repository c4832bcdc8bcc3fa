"""Recognition latency on CPU: per photo (detect / hash / embed / search) and search alone at 1k, 5k and 20k cards.

Run: OMP_NUM_THREADS=1 python benchmarks/recognize_latency.py  → benchmarks/results/recognize_latency.json
The embedder is a student-shaped EfficientNet-Lite0 (random init: speed does not depend on the weights) exported
with cardlib.export; galleries are random embeddings/hashes, since search time does not depend on their content.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine_speed import timed_ms  # noqa: E402

from cardlib.data.camera import simulate_photo  # noqa: E402
from cardlib.data.catalogue import synthetic_catalogue  # noqa: E402
from cardlib.export import export_onnx  # noqa: E402
from cardlib.find_card import find_card  # noqa: E402
from cardlib.gallery import Gallery, OnnxEmbedder, build_gallery  # noqa: E402
from cardlib.preprocess import Preprocess  # noqa: E402
from cardlib.recognize import FusedMatcher, recognize_photos  # noqa: E402

GALLERY_SIZES = (1_000, 5_000, 20_000)
N_PHOTOS = 12  # simulated photos timed end to end
SEARCH_REPEATS = 50
EMBED_DIM = 256  # the teacher's default embed_dim, which the student matches


class StudentShaped(torch.nn.Module):
    """EfficientNet-Lite0 trunk + linear embedding head: the shape (and cost) of the distilled student."""

    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        self.trunk = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
        self.head = torch.nn.Linear(self.trunk.num_features, dim)
        self.normalize = True

    def forward(self, x):
        y = self.head(self.trunk(x))
        return F.normalize(y, dim=1) if self.normalize else y


def random_gallery(n: int, model_id: str, pre: Preprocess, rng: np.random.Generator) -> Gallery:
    emb = rng.normal(size=(n, EMBED_DIM)).astype(np.float32)
    return Gallery([f"c{i}" for i in range(n)], [f"card {i}" for i in range(n)], [{}] * n, emb,
                   rng.integers(0, 256, (n, 16), dtype=np.uint8), model_id, pre.to_dict())


def main(out_path: Path) -> dict:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    pre = Preprocess()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(StudentShaped().eval(), Path(tmp) / "student.onnx", (pre.height, pre.width),
                                dynamic_batch=True, normalize_output=False, simplify=False, preprocess=pre)
        embedder = OnnxEmbedder(onnx_path, pre)

    cat = synthetic_catalogue(N_PHOTOS, 2, reprint_fraction=0.0, variant_fraction=0.0, seed=1)
    photos = [simulate_photo(cat.image(c), seed=i).image for i, c in enumerate(cat.ids)]

    search = {}
    for n in GALLERY_SIZES:
        gallery = random_gallery(n, embedder.model_id, pre, rng)
        bits, emb = FusedMatcher(gallery, embedder).query_features([cat.image(cat.ids[0])])
        row = {}
        for method in ("hash", "embedding", "fused"):
            m = FusedMatcher(gallery, embedder, method=method)
            feats = (bits, None if method == "hash" else emb)

            def one_query(m=m, feats=feats):
                sc = m._method_scores(m.signals_from_features(*feats))
                np.argpartition(-sc, 4, axis=1)[:, :5]

            row[method] = timed_ms(one_query, SEARCH_REPEATS)
        search[str(n)] = row
        print(f"search ms/query at {n} cards: {row}", file=sys.stderr)

    # per photo at 20k cards: the real synthetic cards are in the gallery, padded with random distractors
    refs = {c: cat.image(c) for c in cat.ids}
    gallery = build_gallery(refs, embedder)
    gallery.append(random_gallery(GALLERY_SIZES[-1] - len(gallery), embedder.model_id, pre, rng))
    matcher = FusedMatcher(gallery, embedder)
    detect, hashing, embed, srch, found = [], [], [], [], 0
    for photo in photos:
        t0 = time.perf_counter()
        cands = find_card(photo, out_size=(pre.height, pre.width))
        t1 = time.perf_counter()
        crop = cands[0].crop if cands else pre.resize_uint8(photo)
        found += bool(cands)
        matcher.method = "hash"
        bits, _ = matcher.query_features([crop])
        t2 = time.perf_counter()
        emb = embedder([crop, crop[::-1, ::-1]]).reshape(1, 2, -1)
        t3 = time.perf_counter()
        matcher.method = "fused"
        sc = matcher._method_scores(matcher.signals_from_features(bits, emb))
        np.argpartition(-sc, 4, axis=1)[:, :5]
        t4 = time.perf_counter()
        for lst, a, b in ((detect, t0, t1), (hashing, t1, t2), (embed, t2, t3), (srch, t3, t4)):
            lst.append(1000 * (b - a))
    t = time.perf_counter()
    recognize_photos(photos, matcher, top_k=5)
    e2e = 1000 * (time.perf_counter() - t) / len(photos)
    per_photo = {k: round(float(np.median(v)), 2) for k, v in
                 (("detect", detect), ("hash", hashing), ("embed", embed), ("search_fused_20k", srch))}
    per_photo["total"] = round(sum(per_photo.values()), 2)
    result = {
        "gallery_sizes": list(GALLERY_SIZES),
        "search_ms_per_query": search,
        "per_photo_ms_median": per_photo,
        "recognize_photos_ms_per_photo": round(e2e, 2),
        "photos": len(photos), "cards_found": found,
        "model": "efficientnet_lite0 + linear 256 (random init), ONNX Runtime CPU",
        "input_size": [pre.height, pre.width],
        "threads": int(os.environ["OMP_NUM_THREADS"]),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": ("both orientations are embedded and hashed per photo; search includes calibration, fusion and top-5; "
                 "medians on a shared CPU, so contention inflates them; accuracy is not measured here"),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(__file__).resolve().parent / "results" / "recognize_latency.json"), indent=2))

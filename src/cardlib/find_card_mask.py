"""Where the cards are: a small segmentation network's per-pixel card probability, one cue of `find_card`.

Edges alone cannot tell a card's cut edge from its printed frame, its sleeve or a box on the table; a network
trained on simulated photos (`find_card_mask_fit`, weights shipped as `find_card_mask.onnx`) looks at the whole
photo. Its mask gives `find_card` extra candidate outlines (snapped to edges like the others) and, for every
candidate, how well it agrees with the mask (a feature of the outline ranker)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

MODEL = Path(__file__).with_name("find_card_mask.onnx")
NET_SIDE = 256  # the photo's long side at the network's input
OUT_STRIDE = 4  # input pixels per output pixel
_MULTIPLE = 16  # input sides are padded to a multiple of the encoder's total stride


def net_input(rgb: np.ndarray) -> np.ndarray:
    """CHW uint8 network input: the photo with its long side at NET_SIDE, padded (edge pixels repeated) at the
    bottom and right to a multiple of 16."""
    h, w = rgb.shape[:2]
    s = NET_SIDE / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    ph, pw = -nh % _MULTIPLE, -nw % _MULTIPLE
    small = cv2.copyMakeBorder(small, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(small.transpose(2, 0, 1))


@lru_cache(maxsize=1)
def _session(path: str):
    """An ONNX Runtime session for the network at `path` (one per process)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one photo at a time; callers parallelise over photos
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def card_logits(x: np.ndarray, session=None) -> np.ndarray:
    """Logits (H / OUT_STRIDE, W / OUT_STRIDE) for one network input (CHW uint8)."""
    sess = session or _session(str(MODEL))
    return sess.run(None, {"photo": x[None].astype(np.float32)})[0][0, 0]


def card_probability(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """(probability map, photo pixels per map pixel) for a photo."""
    logit = card_logits(net_input(rgb))
    return np.exp(-np.logaddexp(0.0, -logit)), max(rgb.shape[:2]) / NET_SIDE * OUT_STRIDE


def mask_hulls(prob: np.ndarray, step: float, min_area: float) -> list[np.ndarray]:
    """Convex hulls (photo pixels) of the mask's blobs of at least `min_area` photo pixels."""
    fine = cv2.resize(prob, None, fx=4, fy=4, interpolation=cv2.INTER_LINEAR)
    contours, _ = cv2.findContours((fine > 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    f = step / 4
    hulls = [cv2.convexHull(((c.astype(np.float64) + 0.5) * f - 0.5).astype(np.float32)) for c in contours]
    return [h for h in hulls if cv2.contourArea(h) >= min_area]


def quad_cover(quad: np.ndarray, shape: tuple[int, int], step: float, supersample: int) -> np.ndarray:
    """uint8 map of `shape`: how much of each map pixel (`step` photo pixels wide) the quad (photo pixels) covers,
    0..255, from an anti-aliased fill at `supersample` times the map's resolution."""
    h, w = shape
    fine = np.zeros((h * supersample, w * supersample), np.uint8)
    pts = ((np.asarray(quad, np.float64) + 0.5) / step * supersample - 0.5) * 16  # 4 fractional bits
    cv2.fillConvexPoly(fine, np.round(pts).astype(np.int32), 255, lineType=cv2.LINE_AA, shift=4)
    return cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA)


def mask_agreement(quads: np.ndarray, prob: np.ndarray, step: float) -> np.ndarray:
    """Soft IoU of each quad (N,4,2 photo pixels) with the probability map: ~1 when the quad is the mask."""
    total = prob.sum()
    out = np.zeros(len(quads))
    for i, q in enumerate(quads):
        a = quad_cover(q, prob.shape, step, 2).astype(np.float32) / 255.0
        inter = float((a * prob).sum())
        out[i] = inter / max(float(a.sum()) + total - inter, 1e-6)
    return out

"""Perceptual hashing as open-source card scanners do it: pHash + dHash, 64 bits each, 128 bits per card."""
from __future__ import annotations

from typing import Iterable

import imagehash
import numpy as np
from PIL import Image

from cardlib.find_card import CardCandidate, both_orientations, quad_iou

HASH_SIZE = 8  # 8x8 = 64 bits per hash, the size card scanners use
HASH_BITS = 2 * HASH_SIZE * HASH_SIZE  # pHash + dHash
HASH_BYTES = HASH_BITS // 8


def _rgb_uint8(crop: np.ndarray) -> np.ndarray:
    arr = np.asarray(crop)
    if arr.dtype != np.uint8:
        raise ValueError(f"crop must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 8:
        raise ValueError(f"crop must be an RGB(A) image of at least 8x8 pixels, got shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def card_hash(crop: np.ndarray) -> np.ndarray:
    """One RGB uint8 crop → (16,) uint8: pHash bits then dHash bits, packed big-endian."""
    image = Image.fromarray(_rgb_uint8(crop))
    bits = np.concatenate([imagehash.phash(image, hash_size=HASH_SIZE).hash.ravel(),
                           imagehash.dhash(image, hash_size=HASH_SIZE).hash.ravel()])
    return np.packbits(bits.astype(np.uint8))


def card_hashes(crops: Iterable[np.ndarray]) -> np.ndarray:
    """Crops → (N, 16) uint8 packed pHash+dHash bits."""
    rows = [card_hash(c) for c in crops]
    return np.stack(rows) if rows else np.zeros((0, HASH_BYTES), np.uint8)


def hash_signs(hashes: np.ndarray) -> np.ndarray:
    """(N, 16) packed bits → (N, 128) float32 in {-1, +1}: the form in which Hamming distance is a matmul."""
    hashes = np.asarray(hashes, np.uint8)
    if hashes.ndim != 2 or hashes.shape[1] != HASH_BYTES:
        raise ValueError(f"hashes must be (N, {HASH_BYTES}) uint8, got shape {hashes.shape}")
    return np.unpackbits(hashes, axis=1).astype(np.float32) * 2.0 - 1.0


def hash_similarity(query_bits: np.ndarray, gallery_bits: np.ndarray, gallery_signs: np.ndarray | None = None) -> np.ndarray:
    """(Nq, 16) vs (Ng, 16) packed hashes → (Nq, Ng) float32 = 1 − Hamming/128.

    With ±1 codes the dot product is 128 − 2·Hamming, so one BLAS matmul does 20,000 cards in well under a
    millisecond per query, and the result is exact (integers ≤ 128 are exact in float32).
    `gallery_signs` lets a caller pass the gallery's precomputed `hash_signs` to skip unpacking it per call.
    """
    q = hash_signs(np.atleast_2d(query_bits))
    g = hash_signs(gallery_bits) if gallery_signs is None else gallery_signs
    return (q @ g.T + HASH_BITS) / (2.0 * HASH_BITS)


GALLERY_ALTERNATIVES = 3  # other outlines than the finder's choice that the gallery check looks at
GALLERY_CHECK_MARGIN = 0.04  # an alternative outline replaces the finder's choice only when it matches this much better
GALLERY_MATCH_MIN = 0.7  # a choice matching a gallery card this well is a card: another object does not replace it


def gallery_check(found: list[CardCandidate], gallery_bits: np.ndarray, gallery_signs: np.ndarray | None = None,
                  margin: float = GALLERY_CHECK_MARGIN) -> tuple[int, list[float]]:
    """Which of a photo's candidates (`find_card` with alternatives: its choice first) shows a card of the gallery?

    Each crop's best pHash+dHash similarity to any gallery card, upright or turned 180°; going through the
    alternatives in order, one replaces the current choice only when it matches `margin` better, and, when it is
    another object (their outlines hardly overlap), only when the choice matches no card (< GALLERY_MATCH_MIN): the
    card the camera was aimed at keeps its place beside cleaner cards. A look-alike outline (a printed box, a sleeve
    mixed with the card, two cards side by side, a block of the table) matches nothing in particular (~0.6 over
    thousands of cards); the card itself matches its own entry (~0.8–0.95). Measured on 600 simulated photos (two
    seeds) against the margin of 0.03 without the object rule: 0.918 -> 0.927 found; with other cards in view
    0.60 -> 0.665. Returns the chosen index and every crop's best similarity."""
    if not found:
        raise ValueError("gallery_check needs at least one candidate")
    both = [o for c in found for o in both_orientations(c.crop)]
    sim = hash_similarity(card_hashes(both), gallery_bits, gallery_signs)
    best = [float(x) for x in sim.max(axis=1).reshape(len(found), 2).max(axis=1)]
    k = 0
    for j in range(1, len(best)):
        other = quad_iou(found[j].corners, found[k].corners) < 0.2
        if best[j] > best[k] + margin and not (other and best[k] >= GALLERY_MATCH_MIN):
            k = j
    return k, best

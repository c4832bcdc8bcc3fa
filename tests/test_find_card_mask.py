"""The card-mask network of find_card: its targets, its training and ONNX export (same logits as PyTorch), and the
shipped network's masks on fresh simulated photos."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cardlib.data.camera import simulate_photo
from cardlib.data.catalogue import synthetic_catalogue
from cardlib.find_card_geometry import quad_iou
from cardlib.find_card_mask import (MODEL, NET_SIDE, OUT_STRIDE, _session, card_logits, card_probability,
                                    mask_agreement, mask_hulls, net_input)
from cardlib.find_card_mask_fit import export_mask_net, mask_example, mask_iou, train_mask_net


def photos(seed: int, n: int, size=(240, 320)) -> list:
    cat = synthetic_catalogue(n_cards=n, n_sets=2, seed=seed)
    return [simulate_photo(cat.image(cid), seed=seed * 1000 + i, photo_size=size, difficulty=1.0)
            for i, cid in enumerate(cat.ids)]


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (300, 533), (1000, 37)])
def test_net_input_keeps_the_aspect_with_the_long_side_at_net_side(size):
    x = net_input(np.zeros((*size, 3), np.uint8))
    h, w = size
    assert x.shape[0] == 3 and x.shape[1] % 16 == 0 and x.shape[2] % 16 == 0
    assert max(x.shape[1:]) - NET_SIDE < 16 and abs(x.shape[1] - round(h * NET_SIDE / max(size))) < 16


def test_target_fills_the_cards_quad_and_nothing_else():
    ph = photos(5, 1, size=(480, 640))[0]
    x, y = mask_example(ph.image, ph.corners)
    step = 640 / NET_SIDE * OUT_STRIDE
    inside = cv2.intersectConvexConvex(ph.corners, np.float32([[0, 0], [640, 0], [640, 480], [0, 480]]))[0]
    assert y.shape == (x.shape[1] // OUT_STRIDE, x.shape[2] // OUT_STRIDE)
    # the anti-aliased fill reaches ~1/8 of an output pixel beyond the quad: a few % of a small card's area
    assert abs(y.sum() / 255.0 - inside / step**2) < 0.05 * inside / step**2
    hull = mask_hulls(y.astype(np.float32) / 255.0, step, min_area=100)
    assert len(hull) == 1 and quad_iou(cv2.boxPoints(cv2.minAreaRect(hull[0])), ph.corners) > 0.85


def test_agreement_is_highest_for_the_quad_that_is_the_mask():
    prob = np.zeros((48, 64), np.float32)
    prob[10:30, 20:34] = 1.0
    step = 4.0
    q = np.array([[20, 10], [34, 10], [34, 30], [20, 30]], np.float64) * step - 0.5
    shifted, bigger = q + [step * 3, 0], (q - q.mean(0)) * 1.3 + q.mean(0)
    a = mask_agreement(np.stack([q, shifted, bigger]), prob, step)
    assert a[0] > 0.9 and a[0] > a[2] > 0.5 and a[0] > a[1]


def test_training_lowers_the_loss_and_the_onnx_export_gives_the_same_logits(tmp_path):
    examples = [mask_example(p.image, p.corners) for p in photos(7, 12)]
    net, losses = train_mask_net(examples, epochs=3, batch=4, lr=3e-3, progress=False)
    assert losses[-1] < losses[0]
    path = tmp_path / "mask.onnx"
    export_mask_net(net, path)
    sess = _session(str(path))
    x = examples[0][0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x[None]).float())[0, 0].numpy()
    assert np.allclose(card_logits(x, sess), ref, atol=1e-3)
    assert mask_iou(sess, examples) == pytest.approx(mask_iou(net, examples), abs=0.01)


def test_training_refuses_no_examples():
    with pytest.raises(ValueError, match="no examples"):
        train_mask_net([])


def test_shipped_network_finds_the_card_on_fresh_photos():
    ps = photos(29, 16, size=(480, 640))
    assert mask_iou(_session(str(MODEL)), [mask_example(p.image, p.corners) for p in ps]) > 0.8
    agree = []
    for p in ps:
        prob, step = card_probability(p.image)
        wrong = (p.corners - p.corners.mean(0)) * 1.25 + p.corners.mean(0)  # a sleeve-like outline around it
        agree.append(mask_agreement(np.stack([p.corners, wrong]), prob, step))
    agree = np.array(agree)
    assert (agree[:, 0] > agree[:, 1]).mean() >= 0.9

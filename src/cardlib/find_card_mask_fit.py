"""Training the card-mask network of `find_card_mask` on simulated photos with known corners.

Each photo's target is the card's own outline filled (its printed corners: a sleeve or toploader around it is not
card), at the network's output resolution. The network is small and fully convolutional; it is exported to ONNX
(opset 13) and run with ONNX Runtime, so finding cards needs no PyTorch."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cardlib.find_card_mask import NET_SIDE, OUT_STRIDE, card_logits, net_input, quad_cover
from cardlib.store import atomic_write_bytes


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MaskNet(nn.Module):
    """Encoder to 1/16 with dilated context, decoder back to 1/4 with skips; one logit per output pixel."""

    def __init__(self):
        super().__init__()
        self.e1 = _conv(3, 16, 2)
        self.e2 = nn.Sequential(_conv(16, 32, 2), _conv(32, 32))
        self.e3 = nn.Sequential(_conv(32, 48, 2), _conv(48, 48))
        self.e4 = nn.Sequential(_conv(48, 64, 2), _conv(64, 64, dilation=2), _conv(64, 64, dilation=4))
        self.d3 = nn.Sequential(_conv(112, 48, k=1), _conv(48, 48))
        self.d2 = nn.Sequential(_conv(80, 32, k=1), _conv(32, 32))
        self.head = nn.Conv2d(32, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self.e2(self.e1(x / 127.5 - 1.0))  # RGB 0..255 in
        x3 = self.e3(x2)
        x4 = self.e4(x3)
        y = self.d3(torch.cat([F.interpolate(x4, size=x3.shape[2:], mode="bilinear", align_corners=False), x3], 1))
        y = self.d2(torch.cat([F.interpolate(y, size=x2.shape[2:], mode="bilinear", align_corners=False), x2], 1))
        return self.head(y)


def mask_example(rgb: np.ndarray, corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(network input CHW uint8, target HW uint8 0..255) for one photo: the card's quad filled, anti-aliased."""
    x = net_input(rgb)
    shape = (x.shape[1] // OUT_STRIDE, x.shape[2] // OUT_STRIDE)
    return x, quad_cover(corners, shape, max(rgb.shape[:2]) / NET_SIDE * OUT_STRIDE, 4)


def _batches(xs: list, ys: list, batch: int, rng: np.random.Generator):
    """Shuffled batches of equal-shape examples, randomly mirrored and turned (the target turns with the photo)."""
    by_shape: dict = {}
    for i, x in enumerate(xs):
        by_shape.setdefault(x.shape, []).append(i)
    chunks = []
    for idx in by_shape.values():
        idx = rng.permutation(idx)
        chunks += [idx[k:k + batch] for k in range(0, len(idx), batch)]
    for c in rng.permutation(len(chunks)):
        x = torch.from_numpy(np.stack([xs[i] for i in chunks[c]])).float()
        y = torch.from_numpy(np.stack([ys[i] for i in chunks[c]])).float()[:, None] / 255.0
        if rng.random() < 0.5:
            x, y = x.flip(3), y.flip(3)
        if rng.random() < 0.5:
            x, y = x.flip(2), y.flip(2)
        yield x, y


def train_mask_net(examples: list, epochs: int = 8, batch: int = 16, lr: float = 3e-3, seed: int = 0,
                   progress: bool = True) -> tuple[MaskNet, list[float]]:
    """Fit a MaskNet (binary cross-entropy + soft Dice, AdamW, one-cycle schedule); returns it and the epoch losses."""
    if not examples:
        raise ValueError("no examples to train the card-mask network on")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xs, ys = [e[0] for e in examples], [e[1] for e in examples]
    net = MaskNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    shapes = [x.shape for x in xs]
    steps = epochs * sum(-(-shapes.count(sh) // batch) for sh in set(shapes))  # batches never mix shapes
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    losses = []
    bar = tqdm(total=steps, desc="card-mask network", disable=None if progress else True)
    for _ in range(epochs):
        net.train()
        total, n = 0.0, 0
        for x, y in _batches(xs, ys, batch, rng):
            logit = net(x)
            p = torch.sigmoid(logit)
            dice = 1 - (2 * (p * y).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
            loss = F.binary_cross_entropy_with_logits(logit, y) + 0.5 * dice.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(x), n + len(x)
            bar.update()
            bar.set_postfix(loss=f"{total / n:.4f}")
        losses.append(total / n)
    bar.close()
    return net.eval(), losses


def export_mask_net(net: MaskNet, path: str | Path) -> None:
    """Write the network as ONNX (opset 13, any input height and width), atomically."""
    buf = io.BytesIO()
    dummy = torch.zeros(1, 3, NET_SIDE * 3 // 4, NET_SIDE)
    torch.onnx.export(net.eval(), dummy, buf, opset_version=13, dynamo=False, input_names=["photo"],
                      output_names=["card_logit"], dynamic_axes={"photo": {0: "n", 2: "h", 3: "w"},
                                                                 "card_logit": {0: "n", 2: "h", 3: "w"}})
    atomic_write_bytes(Path(path), buf.getvalue())


def mask_iou(net_or_session, examples: list) -> float:
    """Mean IoU of the thresholded predicted mask with the target over `examples` (a held-out check)."""
    ious = []
    for x, y in examples:
        if isinstance(net_or_session, nn.Module):
            with torch.no_grad():
                logit = net_or_session(torch.from_numpy(x[None]).float())[0, 0].numpy()
        else:
            logit = card_logits(x, net_or_session)
        p, t = logit > 0, y >= 128
        ious.append((p & t).sum() / max((p | t).sum(), 1))
    return float(np.mean(ious))

"""The one preprocessing contract: every model, export, calibration and gallery step goes through it."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """RGB uint8 HWC crop (already 5:7) → resized to (height, width) → float CHW normalised by mean/std."""

    height: int = 160  # 5:7 portrait, divisible by 16 for the ViT patch grid
    width: int = 112
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_params(cls, params) -> "Preprocess":
        h, w = params.data.input_size
        return cls(height=h, width=w)

    def resize_uint8(self, img: np.ndarray) -> np.ndarray:
        """Resize an RGB uint8 HxWx3 image to the model's input size (INTER_AREA when shrinking)."""
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        if img.shape[2] == 4:
            img = img[..., :3]
        if img.shape[:2] == (self.height, self.width):
            return np.ascontiguousarray(img, dtype=np.uint8)
        shrink = img.shape[0] > self.height or img.shape[1] > self.width
        return cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def to_uint8_nhwc(self, images) -> np.ndarray:
        """Batch of crops → uint8 (N, H, W, 3): the Hailo calibration / on-device input layout."""
        return np.stack([self.resize_uint8(im) for im in images]).astype(np.uint8)

    def normalize(self, nhwc_uint8: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) → float32 (N, 3, H, W) normalised: exactly what the float models see."""
        x = nhwc_uint8.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        """One RGB uint8 crop → float tensor (3, H, W)."""
        return torch.from_numpy(self.normalize(self.resize_uint8(img)[None])[0])

    def batch(self, images) -> torch.Tensor:
        return torch.from_numpy(self.normalize(self.to_uint8_nhwc(images)))

    def hailo_normalization(self) -> tuple[list[float], list[float]]:
        """mean/std in 0..255 units, for the Hailo model script's normalization layer."""
        return [round(m * 255, 4) for m in self.mean], [round(s * 255, 4) for s in self.std]

    def to_dict(self) -> dict:
        return {**asdict(self), "layout": "NCHW float32 (host) / NHWC uint8 (device)", "color": "RGB"}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(height=int(d["height"]), width=int(d["width"]), mean=tuple(d["mean"]), std=tuple(d["std"]))

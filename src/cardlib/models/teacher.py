"""DINOv3 ViT teacher (Hugging Face transformers): pooled tokens → linear projection → L2-normalised embedding."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from cardlib.store import cache_dir as store_cache_dir, materialize

META_FILE = "cardlib_teacher.json"
HEAD_FILE = "head.safetensors"
POOLS = ("cls", "cls+mean")

# Released DINOv3 shapes (patch 16, 4 register tokens) and two small from-scratch configs for CPU runs.
PRESETS: dict[str, dict] = {
    "dinov3-vitl16": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096, num_register_tokens=4),
    "dinov3-vitb16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, num_register_tokens=4),
    "dinov3-vits16": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                          intermediate_size=1536, num_register_tokens=4),
    # From scratch on a fixed input size, RoPE rescale augmentation only adds noise: switched off.
    "dinov3-small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                         intermediate_size=1024, num_register_tokens=0, pos_embed_rescale=None),
    "dinov3-tiny": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                        intermediate_size=768, num_register_tokens=0, pos_embed_rescale=None),
}


def preset_config(preset: str, image_size: tuple[int, int] = (160, 112)) -> DINOv3ViTConfig:
    """The DINOv3ViTConfig of a named preset for (height, width) inputs."""
    if preset not in PRESETS:
        raise ValueError(f"unknown teacher preset {preset!r}; choose one of {sorted(PRESETS)}")
    h, w = (int(v) for v in image_size)
    if h % 16 or w % 16 or h < 16 or w < 16:
        raise ValueError(f"image_size {image_size} must be (height, width), both positive multiples of the patch size 16")
    return DINOv3ViTConfig(patch_size=16, image_size=[h, w], **PRESETS[preset])


class TeacherModel(nn.Module):
    """backbone → CLS (or CLS ‖ mean patch token) → Linear(embed_dim) → L2 norm."""

    def __init__(self, backbone: DINOv3ViTModel, embed_dim: int, pool: str = "cls+mean",
                 preset: str = "custom", image_size: tuple[int, int] = (160, 112)):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}")
        self.backbone = backbone
        # The mask token only serves masked-image pretraining; left trainable it is an unused DDP parameter.
        backbone.embeddings.mask_token.requires_grad_(False)
        self.pool, self.preset, self.embed_dim = pool, preset, int(embed_dim)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden * (2 if pool == "cls+mean" else 1), self.embed_dim)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + int(self.backbone.config.num_register_tokens)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features before the projection."""
        tokens = self.backbone(pixel_values=x).last_hidden_state
        cls = tokens[:, 0]
        if self.pool == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a float NCHW batch with 3 channels, got shape {tuple(x.shape)}")
        return F.normalize(self.head(self.features(x)), dim=-1)

    def meta(self) -> dict:
        return {"preset": self.preset, "embed_dim": self.embed_dim, "pool": self.pool,
                "image_size": list(self.image_size), "hidden_size": self.backbone.config.hidden_size,
                "format": "cardlib-teacher/1"}


def _local_dir(uri: str | Path, cache_dir: Optional[str | Path]) -> Path:
    """A local directory for a local path or an s3:// URI (downloaded through the project store)."""
    path = materialize(str(uri), cache_dir or store_cache_dir("weights"))
    if not path.is_dir():
        raise NotADirectoryError(f"weights must be a Hugging Face-format directory, got {uri}")
    return path


def build_teacher(preset: str = "dinov3-tiny", embed_dim: int = 256, pool: str = "cls+mean",
                  weights_dir: Optional[str | Path] = None, image_size: tuple[int, int] = (160, 112),
                  cache_dir: Optional[str | Path] = None) -> TeacherModel:
    """Random-init preset, or a pretrained Hugging Face-format DINOv3 directory (local or s3://, never a hub)."""
    config = preset_config(preset, image_size)  # validates preset and size even when weights come from disk
    if weights_dir is None:
        backbone = DINOv3ViTModel(config)
    else:
        backbone = DINOv3ViTModel.from_pretrained(str(_local_dir(weights_dir, cache_dir)), local_files_only=True)
    return TeacherModel(backbone, embed_dim=embed_dim, pool=pool, preset=preset, image_size=image_size)


def save_teacher(model: TeacherModel, out_dir: str | Path) -> Path:
    """Write an HF-format dir: backbone (config + model.safetensors), head.safetensors, cardlib_teacher.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.backbone.save_pretrained(out, safe_serialization=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(out / HEAD_FILE))
    (out / META_FILE).write_text(json.dumps(model.meta(), indent=2))
    return out


def load_teacher(path: str | Path, cache_dir: Optional[str | Path] = None, device: str = "cpu") -> TeacherModel:
    """Load a directory written by save_teacher (local or s3://); eval mode."""
    src = _local_dir(path, cache_dir)
    meta_path = src / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{src} is not a cardlib teacher directory (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    backbone = DINOv3ViTModel.from_pretrained(str(src), local_files_only=True)
    model = TeacherModel(backbone, embed_dim=meta["embed_dim"], pool=meta["pool"],
                         preset=meta.get("preset", "custom"), image_size=tuple(meta["image_size"]))
    model.head.load_state_dict(load_file(str(src / HEAD_FILE)))
    return model.to(device).eval()

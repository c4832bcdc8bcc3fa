"""The student: timm EfficientNet-Lite0 → projection to the teacher's embed_dim → L2 norm."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cardlib.store import cache_dir as store_cache_dir, materialize

META_FILE = "student.json"
WEIGHTS_FILE = "student.safetensors"


class StudentModel(nn.Module):
    """`forward` returns L2-normalised embeddings; with `normalize=False` the raw projection (Hailo's graph end)."""

    def __init__(self, embed_dim: int = 256, channels_last: bool = True, arch: str = "efficientnet_lite0"):
        super().__init__()
        self.arch, self.embed_dim, self.channels_last = arch, int(embed_dim), channels_last
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0)  # global-pooled features
        self.proj = nn.Linear(self.backbone.num_features, self.embed_dim)
        self.normalize = True
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        z = self.proj(self.backbone(x))
        return F.normalize(z, dim=-1) if self.normalize else z

    def meta(self) -> dict:
        return {"arch": self.arch, "embed_dim": self.embed_dim, "channels_last": self.channels_last,
                "format": "cardlib-student/1"}


def build_student(embed_dim: int, weights: Optional[str] = None, channels_last: bool = True,
                  cache_dir: Optional[str | Path] = None) -> StudentModel:
    """Random init (default), or backbone/full weights from a local or s3:// safetensors file."""
    model = StudentModel(embed_dim, channels_last)
    if weights:
        state = load_file(str(materialize(weights, cache_dir or store_cache_dir("weights"))))
        has_proj = any(k.startswith("proj.") for k in state)
        target = model if has_proj else model.backbone  # a bare timm checkpoint fills the backbone only
        missing, unexpected = target.load_state_dict(state, strict=False)
        if unexpected or (has_proj and missing):
            raise ValueError(f"{weights}: not an efficientnet_lite0 checkpoint "
                             f"(unexpected {unexpected[:3]}, missing {missing[:3]})")
    return model


def save_student(model: StudentModel, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS_FILE))
    (out / META_FILE).write_text(json.dumps(model.meta(), indent=2))
    return out / WEIGHTS_FILE


def load_student(path: str | Path, device: str = "cpu") -> StudentModel:
    """Load a directory (or its .safetensors file) written by save_student; eval mode."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta = json.loads((folder / META_FILE).read_text())
    model = StudentModel(meta["embed_dim"], meta.get("channels_last", True), meta.get("arch", "efficientnet_lite0"))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.to(device).eval()

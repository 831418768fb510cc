"""Dense encoding of prompts as extra input channels on nnU-Net's preprocessed grid.

Layout version 1 (``PROMPT_CHANNELS``), appended after the image channels, in this order:

  0. ``positive_clicks``: a solid ball of radius ``click_radius_mm`` (millimetres, so the same click has
     the same physical size whatever the spacing) around every positive point;
  1. ``negative_clicks``: the same for negative points;
  2. ``box``: 1 inside every box (a 2D box fills only its slice);
  3. ``previous_mask``: the previous prediction, or the user's mask prompt (binary).

All channels are 0/1. The layout is written next to a trained model as ``prompt_encoding.json`` and
checked at inference, so a model is never fed another layout silently.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

PROMPT_CHANNELS = ("positive_clicks", "negative_clicks", "box", "previous_mask")
POS, NEG, BOX, MASK = range(4)
ENCODING_FILENAME = "prompt_encoding.json"


@dataclass(frozen=True)
class PromptEncoding:
    channels: Tuple[str, ...] = PROMPT_CHANNELS
    click_radius_mm: float = 4.0
    version: int = 1

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PromptEncoding":
        return cls(channels=tuple(d["channels"]), click_radius_mm=float(d["click_radius_mm"]),
                   version=int(d["version"]))

    def save(self, folder: str) -> None:
        from nnunet_prompt.io_utils import atomic_write_json
        atomic_write_json(self.to_dict(), os.path.join(folder, ENCODING_FILENAME))

    @classmethod
    def load(cls, folder: str) -> "PromptEncoding":
        path = os.path.join(folder, ENCODING_FILENAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"'{path}' is missing: this model folder was not trained by a prompt trainer of nnunet-prompt, or "
                f"the file was removed. Without it the prompt channel layout is unknown.")
        with open(path, "r", encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def check_same(self, other: "PromptEncoding", where: str) -> None:
        if self != other:
            raise ValueError(f"Prompt encoding mismatch for {where}: the model was trained with {other.to_dict()}, "
                             f"this code encodes {self.to_dict()}.")


def ball_radius_voxels(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    return np.maximum(float(radius_mm) / np.asarray(spacing, dtype=float), 0.5)


def draw_balls(channel: torch.Tensor, centers: torch.Tensor, radius_vox: Sequence[float]) -> None:
    """Set a solid (ellipsoidal in voxels, spherical in mm) ball to 1 around each centre, in place.

    channel: (X, Y, Z)-like 3D tensor; centers: (N, 3) voxel coordinates of that tensor."""
    if centers.numel() == 0:
        return
    r = torch.as_tensor(np.asarray(radius_vox, dtype=np.float32), device=channel.device)
    shape = torch.as_tensor(channel.shape, device=channel.device)
    reach = torch.ceil(r).long()
    for c in centers.to(channel.device).float():
        lo = torch.clamp(torch.round(c).long() - reach, min=0)
        hi = torch.minimum(torch.round(c).long() + reach + 1, shape)
        if torch.any(hi <= lo):
            continue
        grids = torch.meshgrid(*[torch.arange(int(lo[a]), int(hi[a]), device=channel.device, dtype=torch.float32)
                                 for a in range(3)], indexing="ij")
        d2 = sum(((g - c[a]) / r[a]) ** 2 for a, g in enumerate(grids))
        region = channel[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])]
        region[d2 <= 1.0] = 1


def encode_preprocessed(shape: Sequence[int], spacing: Sequence[float], encoding: PromptEncoding,
                        positive: Sequence[Sequence[float]] = (), negative: Sequence[Sequence[float]] = (),
                        boxes: Sequence[Tuple[Sequence[int], Sequence[int]]] = (),
                        mask: Optional[np.ndarray] = None, device: torch.device = torch.device("cpu"),
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Prompts already on the preprocessed grid -> (C_prompt, *shape) tensor of 0/1 (``dtype``: torch.uint8 keeps a
    whole CT's channels at a quarter of float32's memory)."""
    out = torch.zeros((encoding.num_channels, *shape), dtype=dtype, device=device)
    radius = ball_radius_voxels(encoding.click_radius_mm, spacing)
    draw_balls(out[POS], torch.as_tensor(np.asarray(positive, dtype=np.float32).reshape(-1, 3)), radius)
    draw_balls(out[NEG], torch.as_tensor(np.asarray(negative, dtype=np.float32).reshape(-1, 3)), radius)
    for lo, hi in boxes:
        out[BOX, lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = 1
    if mask is not None:
        out[MASK] = torch.as_tensor(np.asarray(mask, dtype=np.uint8), device=device)
    return out

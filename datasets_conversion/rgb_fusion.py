"""CT/PET/MRI fused into three 0-255 channels for SAM-style 2D models (the MedSAM study, Ren et al.).

R: CT, window level 40 / width 400 (soft tissue). G: PET clipped to 0-6 SUV. B: mean of T1 and T2 MR, each
clipped to its 0 to 99.5 percentile range and rescaled first. Each is rescaled to 0-255; nnU-Net's
'rgb_to_0_1' normalization divides by 255. A missing modality is replaced by the CT channel, as the
paper's 'CT-only' input replicates CT over the three channels.
"""
from __future__ import annotations

from typing import Dict

import numpy as np


def _to_255(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return (np.clip(x, lo, hi) - lo) / (hi - lo) * 255.0


def ct_window(ct: np.ndarray, level: float = 40.0, width: float = 400.0) -> np.ndarray:
    return _to_255(ct, level - width / 2, level + width / 2)


def pet_suv(pet: np.ndarray, max_suv: float = 6.0) -> np.ndarray:
    return _to_255(pet, 0.0, max_suv)


def mr_percentile(mr: np.ndarray, upper_percentile: float = 99.5) -> np.ndarray:
    return _to_255(mr, float(np.percentile(mr, 0)), float(np.percentile(mr, upper_percentile)))


def fuse_rgb(arrays: Dict[str, np.ndarray]) -> list:
    """``arrays``: modality -> array on the reference grid (needs 'CT'). Returns [R, G, B] float32 in 0-255."""
    red = ct_window(arrays["CT"]).astype(np.float32)
    green = pet_suv(arrays["PET"]).astype(np.float32) if "PET" in arrays else red
    mrs = [mr_percentile(arrays[m]) for m in ("MR_T1", "MR_T2") if m in arrays]
    blue = (np.mean(mrs, axis=0).astype(np.float32)) if mrs else red
    return [red, green, blue]

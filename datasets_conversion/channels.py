"""Modalities -> nnU-Net channel names, which select nnU-Net's intensity normalization.

nnU-Net picks the normalization from the channel name alone ('CT' -> dataset-wide foreground percentile
clipping + global mean/std; 'rgb_to_0_1' -> /255; anything else -> per-image z-score).

PET decision: PET is converted to SUV (body weight) and gets nnU-Net's 'CT' normalization. SUV is a
calibrated unit like Hounsfield units, and a per-image z-score would rescale every patient's uptake by its
own background statistics, so that "SUV 2.5" would mean something different in every case; the
dataset-wide statistics of 'CT' normalization keep uptake comparable across patients. MR intensities are
not calibrated, so MR keeps the per-image z-score. dataset.json records the real modality of each channel
under the extra key 'channel_modalities' (nnU-Net ignores extra keys).
"""
from __future__ import annotations

from typing import Dict, Sequence

NORMALIZATION_NAME = {"CT": "CT", "CT_contrast": "CT", "PET": "CT", "MR_T1": "T1", "MR_T2": "T2", "MR": "MR"}
RGB_CHANNELS = ("R", "G", "B")


def channel_names(modalities: Sequence[str], rgb_fusion: bool) -> Dict[str, str]:
    if rgb_fusion:
        return {str(i): "rgb_to_0_1" for i in range(3)}
    return {str(i): NORMALIZATION_NAME.get(m, m) for i, m in enumerate(modalities)}


def channel_modalities(modalities: Sequence[str], rgb_fusion: bool) -> list:
    if rgb_fusion:
        return ["R: CT (WL 40, WW 400)", "G: PET (0-6 SUV)", "B: mean of MR T1 and T2 (0-99.5 percentile)"]
    return list(modalities)

"""What SAM's image encoder is fed: nnU-Net's normalised channels mapped to the intensities a SAM checkpoint
expects, inside the network.

nnU-Net 2.8 resolves normalisation schemes by name inside nnunetv2 only (the predictor looks the class up
again from plans.json), so a plugin cannot add a "SAM" normalisation to preprocessing. The data therefore keep
nnU-Net's own normalisation (chosen by the channel names of dataset.json) and this fixed, parameter-free
module undoes it per channel into [0, 1] image intensities, as the MedSAM study prepares its input:

* ``RGBTo0_1Normalization`` (``nnunet-prompt convert --rgb-fusion``: CT/PET/MRI already windowed to 0-255
  and divided by 255 by nnU-Net): used as is;
* ``CTNormalization``: nnU-Net's dataset-wide z-score is inverted with the mean and std stored in the plans
  (back to Hounsfield units), then the soft-tissue window of the MedSAM study (level 40, width 400) maps it to [0, 1];
* anything else (per-image z-score, e.g. MR): [-3, 3] standard deviations mapped linearly to [0, 1].

A single channel is replicated to SAM's 3 RGB channels; 3 channels are used as R, G, B; other counts are
refused. Finally the checkpoint's pixel normalisation: ``imagenet`` (official SAM checkpoints: x * 255, then
SAM's pixel mean/std) or ``unit`` ([0, 1] as is: MedSAM's fine-tuned checkpoints).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
PIXEL_NORMS = ("imagenet", "unit")
CT_WINDOW = (40.0, 400.0)  # level, width (the MedSAM study)


class SAMIntensityError(ValueError):
    pass


def channel_transforms(normalization_schemes: Sequence[str], intensity_properties: Dict[str, dict],
                       ct_window=CT_WINDOW) -> List[tuple]:
    """Per input channel (scale, offset) such that clamp(x * scale + offset, 0, 1) is its [0, 1] intensity."""
    level, width = ct_window
    out = []
    for i, scheme in enumerate(normalization_schemes):
        if scheme == "RGBTo0_1Normalization":
            out.append((1.0, 0.0))
        elif scheme == "CTNormalization":
            props = intensity_properties.get(str(i)) or intensity_properties.get(i)
            if props is None:
                raise SAMIntensityError(f"the plans hold no foreground intensity properties for CT channel {i}")
            # HU = x * std + mean; window: (HU - (level - width / 2)) / width
            std, mean = float(props["std"]), float(props["mean"])
            out.append((std / width, (mean - (level - width / 2)) / width))
        else:
            out.append((1.0 / 6.0, 0.5))
    return out


class SAMInputAdapter(nn.Module):
    def __init__(self, normalization_schemes: Sequence[str], intensity_properties: Dict[str, dict],
                 pixel_norm: str = "imagenet"):
        super().__init__()
        if len(normalization_schemes) not in (1, 3):
            raise SAMIntensityError(
                f"SAM takes 1 image channel (replicated to RGB) or 3 (R, G, B), this dataset has "
                f"{len(normalization_schemes)} ({list(normalization_schemes)}). Fuse the modalities into RGB with "
                f"`nnunet-prompt convert ... --rgb-fusion`, or use one channel.")
        if pixel_norm not in PIXEL_NORMS:
            raise SAMIntensityError(f"pixel normalisation {pixel_norm!r} unknown; choose one of {PIXEL_NORMS}")
        t = channel_transforms(normalization_schemes, intensity_properties)
        # constants, not parameters: rebuilt from the plans, so not stored in checkpoints
        self.register_buffer("scale", torch.tensor([a for a, _ in t]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("offset", torch.tensor([b for _, b in t]).view(1, -1, 1, 1), persistent=False)
        if pixel_norm == "imagenet":
            mean = torch.tensor(SAM_PIXEL_MEAN) / 255.0
            std = torch.tensor(SAM_PIXEL_STD) / 255.0
        else:
            mean, std = torch.zeros(3), torch.ones(3)
        self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, 3, 1, 1), persistent=False)
        self.num_channels = len(normalization_schemes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(x * self.scale + self.offset, 0.0, 1.0)
        if self.num_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.pixel_mean) / self.pixel_std

"""Cross-patch prompt (CPP, CT-SAM3D, Algorithm 1 lines 4-5): from a clicked patch U, its
predicted mask U_p and an overlapping neighbour patch V, a light encoder-decoder predicts a click
heatmap for V, so that one click segments an organ larger than a patch.

The module, its training target and its loss live here. PSAPTrainer_CPP trains it beside the
segmentation network (``nnunet_prompt.training.cross_patch_training``: overlapping crop pairs and the
loss added to nnU-Net's); at inference ``nnunet_prompt.inference.cross_patch`` proposes clicks for the
26 neighbouring patches of a segmented patch (Fig. 2D).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamic_network_architectures.architectures.unet import PlainConvUNet


class CrossPatchPromptNet(nn.Module):
    """P(U, U_p, V) -> heatmap in [0, 1] on V's grid, where the object segmented in U should be clicked in V."""

    def __init__(self, image_channels: int, features: Sequence[int] = (8, 16, 32), conv_op=nn.Conv3d,
                 prior_probability: float = 0.01):
        super().__init__()
        n = len(features)
        norm = nn.InstanceNorm3d if conv_op is nn.Conv3d else nn.InstanceNorm2d
        # a small nnU-Net-style U-Net (CT-SAM3D's 'light-weight encoder-decoder'); inputs [U, U_p, V]
        self.divisor = 2 ** (n - 1)  # the U-Net's total stride: inputs are padded to a multiple of it
        self.net = PlainConvUNet(2 * image_channels + 1, n, list(features), conv_op, 3, [1] + [2] * (n - 1), 2, 1,
                                 [1] * (n - 1), True, norm, {"affine": True, "eps": 1e-5},
                                 nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
        # without deep supervision the decoder uses only its last segmentation layer: drop the others, which would
        # hold parameters that never get a gradient (DDP without find_unused_parameters fails on those)
        for i in range(len(self.net.decoder.seg_layers) - 1):
            self.net.decoder.seg_layers[i] = nn.Identity()
        # start from the trivial answer 'no click anywhere' (output ~prior_probability everywhere, RetinaNet's prior
        # initialisation): the target is 0 almost everywhere, and from sigmoid(0) = 0.5 a short schedule spends
        # its steps pulling the whole map down (at lr 1e-3 Adam moves the bias ~0.1 per 100 steps) and leaves
        # a saturated, uninformative heatmap (measured: benchmarks/RESULTS.md, PSAP ablation, run 1)
        nn.init.constant_(self.net.decoder.seg_layers[-1].bias, math.log(prior_probability / (1 - prior_probability)))

    def forward(self, u_image: torch.Tensor, u_prediction: torch.Tensor, v_image: torch.Tensor) -> torch.Tensor:
        """u_image, v_image: (B, C, *spatial); u_prediction: (B, 1, *spatial) foreground probability or mask.
        Any spatial size: the input is zero-padded to a multiple of the U-Net's stride and the output cropped
        back (patches at the image border, or smaller than the planned patch, keep their size)."""
        x = torch.cat([u_image, u_prediction.to(u_image.dtype), v_image], 1)
        spatial = x.shape[2:]
        pad = [(-s) % self.divisor for s in spatial]
        if any(pad):
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)])
        out = torch.sigmoid(self.net(x))
        return out[(slice(None), slice(None), *[slice(0, s) for s in spatial])]


def centroid_heatmap(masks: torch.Tensor, spacing: Sequence[float], sigma_mm: float = 5.0) -> torch.Tensor:
    """CPP target: a Gaussian (peak 1, sigma in millimetres) at the centroid of each mask's foreground.
    masks: (B, *spatial) bool -> (B, 1, *spatial) float; an empty mask gives all zeros (nothing to click)."""
    b, spatial = masks.shape[0], masks.shape[1:]
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32, device=masks.device) for s in spatial], indexing="ij")
    out = torch.zeros((b, 1, *spatial), device=masks.device)
    for i in range(b):
        idx = torch.nonzero(masks[i]).float()
        if idx.shape[0] == 0:
            continue
        centre = idx.mean(0)
        d2 = sum(((g - centre[a]) * float(spacing[a])) ** 2 for a, g in enumerate(grids))
        out[i, 0] = torch.exp(-d2 / (2 * sigma_mm ** 2))
    return out


def cross_patch_loss(cpp: CrossPatchPromptNet, u_image, u_prediction, u_target, v_image, v_prediction, v_target,
                     spacing: Sequence[float], sigma_mm: float = 5.0) -> torch.Tensor:
    """L_cross = MSE(P(U, U_p, V), heatmap(V_gt)) + MSE(P(V, V_p, U), heatmap(U_gt)), Algorithm 1 line 5.
    u_target, v_target: (B, *spatial) bool ground truth of the object in each patch."""
    v_clicks = cpp(u_image, u_prediction, v_image)
    u_clicks = cpp(v_image, v_prediction, u_image)
    return (F.mse_loss(v_clicks, centroid_heatmap(v_target, spacing, sigma_mm))
            + F.mse_loss(u_clicks, centroid_heatmap(u_target, spacing, sigma_mm)))

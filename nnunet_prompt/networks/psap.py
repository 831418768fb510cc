"""PSAP: progressively and spatially aligned prompts (CT-SAM3D, eq. 2).

Every decoder stage of nnU-Net's planned U-Net normalises its features with a prompt-conditioned
instance norm: M = [P, N, Y] (positive clicks, negative clicks, previous mask) is average-pooled to
the stage's spatial size, a shared convolution and two convolution heads give gamma(M) and beta(M) at
that size, and the features become (1 + gamma) * IN(X) + beta.

Decisions, with reasons:

* (1 + gamma) instead of eq. 2's gamma: the form of SPADE (Park et al. 2019, which CT-SAM3D cites as
  its model). With M = 0 (no click yet) gamma and beta are the heads' biases, i.e. the ordinary learned
  affine of nnU-Net's InstanceNorm, and a freshly initialised gamma near 0 does not scale features
  towards 0. ``PSAPNorm(residual_gamma=False)`` is eq. 2 as printed. Not measured against each other.
* The clicks are the encoding's balls of ``click_radius_mm`` (``nnunet_prompt.prompts.encoding``),
  not CT-SAM3D's Gaussian heatmaps: one prompt layout for every trainer.
* The box channel is not part of M: CT-SAM3D has no box prompt, and PSAPTrainer's simulated user
  never draws one, so its weights would never learn. A box given at inference is ignored.
* Each PSAP branch is at most 32 channels wide and never wider than its stage (SPADE uses 128): on
  the narrow CPU plans a full-resolution stage has 8 channels.
* Average pooling, not nearest resizing, brings M to a stage: a click smaller than a coarse voxel
  still shows there, as a fraction.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim

from nnunet_prompt.networks.composed_unet import ComposedUNet
from nnunet_prompt.prompts.encoding import BOX, MASK, NEG, POS

# channels of the prompt encoding that make CT-SAM3D's M = [P, N, Y], in that order
PSAP_PROMPT_CHANNELS = (POS, NEG, MASK)


class BoxIgnoredWarning(UserWarning):
    pass


def resize_prompt(m: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """M (B, C, *spatial) average-pooled (or, for a finer grid, linearly upsampled) to ``size``."""
    if tuple(m.shape[2:]) == tuple(size):
        return m
    if all(s <= t for s, t in zip(size, m.shape[2:])):
        return F.adaptive_avg_pool3d(m, size) if m.ndim == 5 else F.adaptive_avg_pool2d(m, size)
    return F.interpolate(m, size=tuple(size), mode="trilinear" if m.ndim == 5 else "bilinear", align_corners=False)


class PSAPNorm(nn.Module):
    """Prompt-conditioned instance norm: (1 + gamma(M)) * IN(X) + beta(M) (or gamma(M) * IN(X) + beta(M)).

    It sits inside nnU-Net's conv blocks, whose own forward would call ``norm(x)``; ``PSAPUNet`` runs those blocks
    itself and calls ``norm(x, m)``, so M is an argument, never state."""

    def __init__(self, num_features: int, conv_op, prompt_channels: int = len(PSAP_PROMPT_CHANNELS),
                 hidden_channels: int = 32, eps: float = 1e-5, residual_gamma: bool = True):
        super().__init__()
        self.eps = eps
        self.residual_gamma = residual_gamma
        # never wider than the stage: on nnU-Net's narrow high-resolution stages a 32-wide branch would cost
        # more than the stage's own convolutions
        hidden_channels = min(hidden_channels, num_features)
        self.shared = nn.Sequential(conv_op(prompt_channels, hidden_channels, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.gamma = conv_op(hidden_channels, num_features, 3, 1, 1)
        self.beta = conv_op(hidden_channels, num_features, 3, 1, 1)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """x: features (B, C, *S); m: M at the same spatial size (B, 3, *S)."""
        if tuple(m.shape[2:]) != tuple(x.shape[2:]):
            raise RuntimeError(f"PSAP prompt of spatial size {tuple(m.shape[2:])} for features of size "
                               f"{tuple(x.shape[2:])}.")
        h = self.shared(m.to(x.dtype))
        gamma, beta = self.gamma(h), self.beta(h)
        normed = F.instance_norm(x, eps=self.eps)
        return (1 + gamma) * normed + beta if self.residual_gamma else gamma * normed + beta


def _psap_norms_of_stage(stage: nn.Module, conv_op, **norm_kwargs) -> List[PSAPNorm]:
    """Replace the norm of every conv block (ConvDropoutNormReLU) of a decoder stage by a PSAPNorm, in the
    block's ``norm`` attribute and in its ``all_modules`` Sequential (what its forward runs)."""
    norms = []
    for block in stage.convs:
        old = getattr(block, "norm", None)
        if old is None:
            raise ValueError("PSAP needs a norm in every decoder conv block; these plans have none (norm_op=None).")
        psap = PSAPNorm(block.output_channels, conv_op, eps=getattr(old, "eps", 1e-5), **norm_kwargs)
        position = [i for i, m in enumerate(block.all_modules) if m is old]
        assert len(position) == 1, "expected the norm exactly once in the conv block"
        block.all_modules[position[0]] = psap
        block.norm = psap
        norms.append(psap)
    return norms


class PSAPUNet(ComposedUNet):
    """nnU-Net's planned U-Net (PlainConvUNet, ResidualEncoderUNet) whose decoder stages are prompt-modulated.

    Input layout is the prompt trainers' one: image channels, then the prompt encoding's channels
    (``num_prompt_channels``), so nnU-Net's sliding window, mirroring and PromptPredictor work unchanged.
    Inside, the image channels go to the U-Net's encoder and only the decoder sees the prompts.

    ``cross_patch``: optional cross-patch prompt head (``CrossPatchPromptNet``, PSAPTrainer_CPP). It is a
    submodule so that nnU-Net's optimizer, checkpoints (and ``--c``) and DDP treat it as part of the network;
    ``forward`` does not run it: the trainer's loss and the inference propagation call it on patch pairs."""

    def __init__(self, unet: nn.Module, num_prompt_channels: int, hidden_channels: int = 32,
                 residual_gamma: bool = True, cross_patch: Optional[nn.Module] = None):
        super().__init__(unet)
        self.cross_patch = cross_patch
        self.num_prompt_channels = num_prompt_channels
        conv_op = unet.encoder.conv_op
        self.spatial_dims = convert_conv_op_to_dim(conv_op)
        # per decoder stage (lowest resolution first, as the decoder runs them) its PSAP norms
        self.stage_norms: List[List[PSAPNorm]] = [
            _psap_norms_of_stage(stage, conv_op, hidden_channels=hidden_channels, residual_gamma=residual_gamma)
            for stage in unet.decoder.stages]

    def psap_prompt(self, x: torch.Tensor) -> torch.Tensor:
        """M = [P, N, Y] from the input's prompt channels."""
        prompts = x[:, x.shape[1] - self.num_prompt_channels:]
        return prompts[:, list(PSAP_PROMPT_CHANNELS)]

    def forward(self, x: torch.Tensor):
        image = x[:, :x.shape[1] - self.num_prompt_channels]
        m = self.psap_prompt(x)
        if not self.training and bool(x[:, x.shape[1] - self.num_prompt_channels + BOX].any()):
            warnings.warn("PSAP models take clicks and a mask, not boxes (CT-SAM3D has no box prompt); the box prompt "
                          "is ignored. Use PromptTrainer for box prompts.", BoxIgnoredWarning, stacklevel=2)
        return self.decode(self.unet.encoder(image), m)

    def decode(self, skips: List[torch.Tensor], m: torch.Tensor):
        """nnU-Net's UNetDecoder.forward, step for step, except that each PSAP norm is called with M pooled to its
        stage. Written out because the decoder's conv blocks call ``norm(x)``: the alternative, M put on the norm
        modules around the call, is state hidden in the network."""
        decoder = self.unet.decoder
        lres_input = skips[-1]
        seg_outputs = []
        for s, stage in enumerate(decoder.stages):
            x = decoder.transpconvs[s](lres_input)
            x = torch.cat((x, skips[-(s + 2)]), 1)
            m_s = resize_prompt(m, x.shape[2:])
            for block in stage.convs:
                for module in block.all_modules:
                    x = module(x, m_s) if isinstance(module, PSAPNorm) else module(x)
            if decoder.deep_supervision:
                seg_outputs.append(decoder.seg_layers[s](x))
            elif s == len(decoder.stages) - 1:
                seg_outputs.append(decoder.seg_layers[-1](x))
            lres_input = x
        seg_outputs = seg_outputs[::-1]  # the largest prediction first, as nnU-Net's decoder returns them
        return seg_outputs if decoder.deep_supervision else seg_outputs[0]

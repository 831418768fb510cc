"""SAM-RT's prompt path (§2.2): the unified prompt-visual encoder E_p and ProViCMA (eq. 2).

* ``PromptVisualEncoder``: f_p = E_p(I, Q_n, B, M). The prompts arrive as the prompt trainers' dense channels
  (click balls, box, previous mask; ``nnunet_prompt.prompts.encoding``); they are concatenated with the
  image (SAM's RGB input) and a small strided convolution stack brings them to the encoder's 16-pixel token
  grid, so points, box and mask are fused with the image in one representation.
* ``ProViCMA``: f_xy = f_x ⊗ E_xy(f_y ⊗ Sigmoid(MLP(f_x))) for (x, y) in {(p, v), (v, p)}, f_duo = f_pv + f_vp.
  The MLPs are per-pixel (1x1 convolutions), the adaptive information refinement layers E_xy are 3x3
  convolutions (SAM-RT gives no sizes).
"""
from __future__ import annotations

import torch
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class PromptVisualEncoder(nn.Module):
    def __init__(self, image_channels: int, prompt_channels: int, out_channels: int, patch_size: int = 16):
        super().__init__()
        layers, c_in = [], image_channels + prompt_channels
        n_down = max(1, patch_size.bit_length() - 1)  # 16 -> 4 stride-2 stages
        widths = [max(8, out_channels // 2 ** (n_down - 1 - i)) for i in range(n_down)]
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), _norm(c), nn.GELU()]
            c_in = c
        layers.append(nn.Conv2d(c_in, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, prompts], 1))


class _CrossMerge(nn.Module):
    """One direction of eq. 2: f_x ⊗ E(f_y ⊗ sigmoid(MLP(f_x)))."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(8, channels // 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))
        self.refine = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), _norm(channels), nn.GELU(),
                                    nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, f_x: torch.Tensor, f_y: torch.Tensor) -> torch.Tensor:
        return f_x * self.refine(f_y * torch.sigmoid(self.mlp(f_x)))


class ProViCMA(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.pv = _CrossMerge(channels)
        self.vp = _CrossMerge(channels)

    def forward(self, f_p: torch.Tensor, f_v: torch.Tensor) -> torch.Tensor:
        return self.pv(f_p, f_v) + self.vp(f_v, f_p)

"""Multimodal interactive alignment (LLMSeg, Fig. 1b / Suppl. Fig. 5b) at one U-Net level.

The context tokens (B, N, D) are projected linearly to the level's channel count C; one SAM two-way
attention block (token self-attention, token -> image cross-attention, token MLP, image -> token
cross-attention) then updates the level's image features. The block is ``transformers``' own
``SamTwoWayAttentionBlock``; only the flattening of a 3D (or 2D) feature map into tokens is done here.

Image tokens carry a positional embedding, as in SAM: a linear map of the voxel's coordinates in [-1, 1].
Without it image -> token attention could not tell left from right, which is exactly what laterality in
the text asks for. The coordinates are the voxel's position in the whole image (``position``: the network's
position channels, ``nnunet_prompt.text.image_position``, averaged to the level's resolution), or, in models
recorded before those existed, in the patch.
"""
from __future__ import annotations

import torch
from torch import nn


def _num_heads(internal_dim: int) -> int:
    for h in (8, 4, 2):
        if internal_dim % h == 0 and internal_dim // h >= 16:
            return h
    return 1


def patch_coordinates(spatial, device, dtype) -> torch.Tensor:
    """(prod(spatial), ndim) coordinates in [-1, 1], in the order of ``flatten``."""
    axes = [torch.linspace(-1.0, 1.0, int(n), device=device, dtype=dtype) for n in spatial]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(spatial))


class TwoWayTextFusion(nn.Module):
    def __init__(self, context_dim: int, channels: int, spatial_dims: int = 3, attention_downsample_rate: int = 2,
                 mlp_ratio: int = 4, position_dims: int = None):
        """position_dims: channels of the ``position`` forward() is given (None: patch-relative coordinates)."""
        super().__init__()
        from transformers.models.sam.configuration_sam import SamMaskDecoderConfig
        from transformers.models.sam.modeling_sam import SamTwoWayAttentionBlock
        if channels % attention_downsample_rate:
            attention_downsample_rate = 1
        config = SamMaskDecoderConfig(hidden_size=channels, hidden_act="relu", mlp_dim=mlp_ratio * channels,
                                      num_attention_heads=_num_heads(channels // attention_downsample_rate),
                                      attention_downsample_rate=attention_downsample_rate)
        config._attn_implementation = "sdpa"
        self.project = nn.Linear(context_dim, channels)
        self.position = nn.Linear(position_dims or spatial_dims, channels)
        self.block = SamTwoWayAttentionBlock(config, attention_downsample_rate=attention_downsample_rate)

    def forward(self, features: torch.Tensor, context: torch.Tensor, position: torch.Tensor = None) -> torch.Tensor:
        """features (B, C, *spatial), context (B, N, D), position (B, P, *spatial) or None -> features
        (B, C, *spatial) aligned with the context."""
        b, c, *spatial = features.shape
        tokens = self.project(context.to(self.project.weight.dtype))[:, None]          # (B, 1, N, C)
        image = features.flatten(2).transpose(1, 2)[:, None]                           # (B, 1, P, C)
        if position is None:
            pe = self.position(patch_coordinates(spatial, features.device, self.position.weight.dtype))
            pe = pe[None, None].expand(b, 1, -1, -1)
        else:
            pe = self.position(position.flatten(2).transpose(1, 2).to(self.position.weight.dtype))[:, None]
        _, image, _ = self.block(queries=tokens, keys=image, query_point_embedding=torch.zeros_like(tokens),
                                 key_point_embedding=pe.to(image.dtype), attention_similarity=None)
        return image[:, 0].transpose(1, 2).reshape(b, c, *spatial)

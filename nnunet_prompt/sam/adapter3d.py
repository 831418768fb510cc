"""SAM's 2D ViT image encoder adapted to 3D volumes (AutoSAM Adapter, §3.2).

Built from a loaded ``transformers`` ``SamVisionEncoder`` (``nnunet_prompt.sam.checkpoint``): the 2D modules are
reused as they are (their weights are not copied into new layers), and only the parts that need a third
dimension are new:

* patch embedding: the frozen 2D ``k x k`` kernel applied as a ``1 x k x k`` 3D convolution, followed by a
  trainable depth-wise ``k x 1 x 1`` convolution (stride k). The depth convolution starts as the mean over its
  k slices, so a volume of identical slices embeds exactly as SAM embeds that slice.
* absolute positions: the frozen 2D table (interpolated to the in-plane patch grid by the loader) plus a
  trainable depth table of size D' x C that starts at zero (§3.2).
* attention: the frozen qkv / proj Linear layers of each 2D block act on D'·H'·W' tokens. Blocks that SAM
  windows (14 x 14 in 2D) attend within w x w x w windows (``window_size``), so their memory is bounded by the
  window, not the volume; SAM's global blocks attend over the whole patch grid (8 x 8 x 8 = 512 tokens for ViT-B
  at 128³), through ``scaled_dot_product_attention``.
* relative positions: SAM adds decomposed relative-position terms (one table for rows, one for columns) to
  the attention logits, and its frozen qkv weights were trained with them. We keep the frozen row / column
  tables for the in-plane offsets (resized to the window by SAM's own ``get_rel_pos``, as SAM does for
  mismatched sizes) and add a depth table for the through-plane offsets that starts at zero, the same
  "frozen 2D + zero-initialised depth" rule §3.2 gives for the absolute table. At initialisation every
  attention logit therefore equals SAM's for tokens of one slice.
* a spatial adapter after each block's attention (Fig. 2B): down-projection, depth-wise 3D convolution,
  GELU, up-projection, residual. The up-projection starts at zero, so the adapted block starts as SAM's block.
* the bottleneck (SAM's "neck") is rebuilt with 3D convolutions and trained from scratch (§3.2).

Trainable: adapters, layer norms, convolutions (except the frozen in-plane patch kernel) and the depth tables;
frozen: everything else that came from the checkpoint (``frozen_parameter_names``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionEncoder, SamVisionLayer


class ChannelLayerNorm3d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, D, H, W) tensor (SAM's channels-first LayerNorm, in 3D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class PatchEmbedding3D(nn.Module):
    def __init__(self, projection2d: nn.Conv2d):
        super().__init__()
        k = projection2d.kernel_size
        if k[0] != k[1] or projection2d.stride != k:
            raise ValueError(f"expected SAM's square, non-overlapping patch embedding, got {projection2d}")
        self.patch_size = k[0]
        hidden = projection2d.out_channels
        self.in_plane = nn.Conv3d(projection2d.in_channels, hidden, (1, *k), stride=(1, *k),
                                  bias=projection2d.bias is not None)
        with torch.no_grad():
            self.in_plane.weight.copy_(projection2d.weight.unsqueeze(2))
            if projection2d.bias is not None:
                self.in_plane.bias.copy_(projection2d.bias)
        self.depth = nn.Conv3d(hidden, hidden, (k[0], 1, 1), stride=(k[0], 1, 1), groups=hidden)
        with torch.no_grad():  # mean over the k slices of a patch: identical slices embed as in 2D
            self.depth.weight.fill_(1.0 / k[0])
            self.depth.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depth(self.in_plane(x))  # (B, C, D/k, H/k, W/k)


class PositionalEncoding3D(nn.Module):
    def __init__(self, table2d: torch.Tensor, grid: Tuple[int, int, int]):
        """table2d: SAM's absolute table (1, H', W', C) already at the in-plane grid size."""
        super().__init__()
        if tuple(table2d.shape[1:3]) != tuple(grid[1:]):
            table2d = F.interpolate(table2d.permute(0, 3, 1, 2).float(), size=grid[1:], mode="bicubic",
                                    align_corners=False).permute(0, 2, 3, 1)
        self.table2d = nn.Parameter(table2d.detach().clone())
        self.depth_table = nn.Parameter(torch.zeros(grid[0], table2d.shape[-1]))  # §3.2: zero-initialised
        self.grid = tuple(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D', H', W', C) tokens."""
        if tuple(x.shape[1:4]) != self.grid:
            raise ValueError(f"this encoder was built for a token grid of {self.grid} (the plans' patch size / "
                             f"the ViT patch), got {tuple(x.shape[1:4])}")
        return x + self.table2d[:, None] + self.depth_table[None, :, None, None, :]


def _windows(x: torch.Tensor, w: Sequence[int]) -> Tuple[torch.Tensor, tuple]:
    """(B, D, H, W, C) -> (B * nWindows, wd, wh, ww, C), padding with zeros to multiples of the window."""
    b, d, h, wi, c = x.shape
    pad = [(-s) % k for s, k in zip((d, h, wi), w)]
    if any(pad):
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
    D, H, W = d + pad[0], h + pad[1], wi + pad[2]
    x = x.view(b, D // w[0], w[0], H // w[1], w[1], W // w[2], w[2], c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w[0], w[1], w[2], c)
    return x, (b, d, h, wi, D, H, W)


def _unwindows(x: torch.Tensor, w: Sequence[int], shape: tuple) -> torch.Tensor:
    b, d, h, wi, D, H, W = shape
    x = x.view(b, D // w[0], H // w[1], W // w[2], w[0], w[1], w[2], -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, D, H, W, -1)
    return x[:, :d, :h, :wi].contiguous()


class Attention3D(nn.Module):
    """Multi-head self-attention of a SAM block over a (windowed) 3D token grid."""

    def __init__(self, attn2d: SamVisionAttention, depth_extent: int):
        super().__init__()
        self.attn = attn2d  # frozen qkv, proj and the in-plane relative tables
        head_dim = attn2d.qkv.in_features // attn2d.num_attention_heads
        self.use_rel_pos = bool(attn2d.use_rel_pos)
        # through-plane relative positions, zero at the start (see the module docstring)
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * depth_extent - 1, head_dim)) if self.use_rel_pos else None

    def _rel_bias(self, q: torch.Tensor, size: Tuple[int, int, int]) -> torch.Tensor:
        d, h, w = size
        a = self.attn
        rd = a.get_rel_pos(d, d, self.rel_pos_d).to(q.dtype)
        rh = a.get_rel_pos(h, h, a.rel_pos_h).to(q.dtype)
        rw = a.get_rel_pos(w, w, a.rel_pos_w).to(q.dtype)
        bh, n, c = q.shape
        rq = q.reshape(bh, d, h, w, c)
        bias = (torch.einsum("bdhwc,dkc->bdhwk", rq, rd)[..., :, None, None]
                + torch.einsum("bdhwc,hkc->bdhwk", rq, rh)[..., None, :, None]
                + torch.einsum("bdhwc,wkc->bdhwk", rq, rw)[..., None, None, :])
        return bias.reshape(bh, n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, d, h, w, C) -> same shape."""
        b, d, h, w, c = x.shape
        heads = self.attn.num_attention_heads
        qkv = self.attn.qkv(x).reshape(b, d * h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)
        mask = None
        if self.use_rel_pos:
            mask = self._rel_bias(q.reshape(b * heads, d * h * w, -1), (d, h, w)).view(b, heads, d * h * w, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.attn.proj(out.transpose(1, 2).reshape(b, d, h, w, c))


class SpatialAdapter3D(nn.Module):
    """Fig. 2B: X + Up(GELU(DWConv3d(Down(X)))), on (B, D, H, W, C) tokens; starts as the identity."""

    def __init__(self, hidden: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.conv = nn.Conv3d(bottleneck, bottleneck, 3, padding=1, groups=bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x).permute(0, 4, 1, 2, 3)
        h = self.act(self.conv(h)).permute(0, 2, 3, 4, 1)
        return x + self.up(h)


class AdaptedBlock3D(nn.Module):
    def __init__(self, layer2d: SamVisionLayer, window: Optional[Tuple[int, int, int]], grid: Tuple[int, int, int],
                 adapter_dim: int):
        """window: None for SAM's global-attention blocks (attend over the whole grid)."""
        super().__init__()
        self.window = None if window is None else tuple(min(w, g) for w, g in zip(window, grid))
        self.layer_norm1 = layer2d.layer_norm1
        self.attn = Attention3D(layer2d.attn, (self.window or grid)[0])
        self.adapter = SpatialAdapter3D(layer2d.layer_norm1.normalized_shape[0], adapter_dim)
        self.layer_norm2 = layer2d.layer_norm2
        self.mlp = layer2d.mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm1(x)
        if self.window is not None and tuple(h.shape[1:4]) != self.window:
            windows, shape = _windows(h, self.window)
            h = _unwindows(self.attn(windows), self.window, shape)
        else:
            h = self.attn(h)
        x = self.adapter(x + h)
        return x + self.mlp(self.layer_norm2(x))


class Bottleneck3D(nn.Module):
    """SAM's neck (1x1 conv, LayerNorm, 3x3 conv, LayerNorm) in 3D, trained from scratch (§3.2)."""

    def __init__(self, hidden: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(hidden, out_channels, 1, bias=False)
        self.norm1 = ChannelLayerNorm3d(out_channels, eps=1e-6)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = ChannelLayerNorm3d(out_channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.norm1(self.conv1(x))))


class SAMEncoder3D(nn.Module):
    """The adapted encoder. forward(x (B, 3, D, H, W)) -> (image embedding (B, out, D', H', W'),
    stage features [(B, hidden, D', H', W')] after each of SAM's global blocks, last block's features)."""

    def __init__(self, encoder2d: SamVisionEncoder, patch_size: Sequence[int], window_size: int = 8,
                 adapter_ratio: float = 0.25):
        super().__init__()
        config = encoder2d.config
        k = config.patch_size
        if any(p % k for p in patch_size):
            raise ValueError(f"the patch size {list(patch_size)} must be a multiple of the ViT's {k}-voxel patch in "
                             f"every axis; plan with `nnunet-prompt plan DATASET -pl SAMAdapter3DPlanner`")
        self.grid = tuple(int(p) // k for p in patch_size)
        hidden = config.hidden_size
        self.patch_embed = PatchEmbedding3D(encoder2d.patch_embed.projection)
        if encoder2d.pos_embed is None:
            raise ValueError("SAM encoders without an absolute position table are not supported")
        self.pos = PositionalEncoding3D(encoder2d.pos_embed.data, self.grid)
        global_idx = set(config.global_attn_indexes)
        window = (window_size,) * 3
        adapter_dim = max(1, int(hidden * adapter_ratio))
        self.blocks = nn.ModuleList(
            AdaptedBlock3D(layer, None if (i in global_idx or layer.window_size == 0) else window, self.grid,
                           adapter_dim)
            for i, layer in enumerate(encoder2d.layers))
        # the stages of §3.4 / Fig. 2A: outputs of SAM's global blocks (3, 6, 9, 12 in ViT-B)
        self.stage_indexes = sorted(global_idx) or [len(self.blocks) - 1]
        self.bottleneck = Bottleneck3D(hidden, config.output_channels)
        self.hidden_size = hidden
        self.out_channels = config.output_channels
        self.vit_patch_size = k

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor]:
        t = self.pos(self.patch_embed(x).permute(0, 2, 3, 4, 1))
        stages = []
        for i, block in enumerate(self.blocks):
            t = block(t)
            if i in self.stage_indexes:
                stages.append(t.permute(0, 4, 1, 2, 3))
        last = t.permute(0, 4, 1, 2, 3)
        return self.bottleneck(last), stages, last


def frozen_parameter_names(encoder: SAMEncoder3D, prefix: str = "") -> List[str]:
    """The parameters that keep the checkpoint's values: in-plane patch kernel, 2D position table, qkv, proj, the
    in-plane relative tables and the MLPs. (Layer norms, adapters, depth tables and convolutions train.)"""
    names = [f"{prefix}patch_embed.in_plane.{n}" for n, _ in encoder.patch_embed.in_plane.named_parameters()]
    names.append(f"{prefix}pos.table2d")
    for i, block in enumerate(encoder.blocks):
        for n, _ in block.attn.attn.named_parameters():
            names.append(f"{prefix}blocks.{i}.attn.attn.{n}")
        for n, _ in block.mlp.named_parameters():
            names.append(f"{prefix}blocks.{i}.mlp.{n}")
    return names

"""nnU-Net's planned U-Net, conditioned on clinical context at every level (LLMSeg's layout).

The U-Net is the one nnU-Net planned (PlainConvUNet, ResidualEncoderUNet, ...), composed, not forked:
its encoder produces the skip features, a ``TwoWayTextFusion`` per level (every skip connection and the
bottleneck) aligns them with the case's context tokens, and its own decoder finishes.

The context is not a tensor input, and nnU-Net's train_step and sliding-window predictor call ``network(x)``
with nothing else. So the caller conditions the network for the span of such a call:
``with network.conditioned_on(entries): ...`` (one entry per sample, or one entry for all tiles of a case).
Outside that block the network holds no context, and ``forward`` refuses to run.

Input: the image channels, then (``position_channels`` > 0) the position channels
(``nnunet_prompt.text.image_position``), then any further channels (spatial prompts). The position channels go to
every fusion's positional embedding, averaged to its level's resolution, and, like all channels, to the encoder.
With ``position_maps`` > 0 the network appends that many text-steered position maps (``TextPositionMap``: affine
functions of the position whose coefficients the context chooses) to its input before the encoder reads it, and
adds a 1x1 convolution of them to its logits. Why the logits too: as input alone, maps that do not yet carry the
text's side give the convolutions nothing to use, so nothing teaches the maps to carry it (with ten wordings of
the notes the side is a faint part of the context). On the logits, every voxel's loss reaches the maps'
coefficients directly, as in a classifier of the side. With ``laterality_contrast`` the context encoder reads each
entry and its side-swapped copy in one pass, and the maps' slopes read the difference (``TextPositionMap``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim

from nnunet_prompt.networks.composed_unet import ComposedUNet
from nnunet_prompt.text.fusion import TwoWayTextFusion, patch_coordinates
from nnunet_prompt.text.perturbation import swap_laterality_in
from nnunet_prompt.text.position_map import TextPositionMap


class TextConditionedUNet(ComposedUNet):
    extra_context_tokens = 0  # tokens ``contexts`` appends to the encoder's (TextAndPromptUNet: the target label's)

    def __init__(self, unet: nn.Module, context_encoder: nn.Module, context_key: str, num_image_channels: int = 0,
                 position_channels: int = 0, position_maps: int = 0, laterality_contrast: bool = False):
        """context_key: which part of a clinical-text entry the context encoder reads ('text' or 'fields').
        position_channels: how many position channels follow the ``num_image_channels`` image channels (0: none,
        the fusions use patch-relative coordinates). position_maps: text-steered position maps appended to the
        input (the U-Net's first convolution must take that many more channels). laterality_contrast: their slopes
        read each entry against its side-swapped copy (``TextPositionMap``)."""
        super().__init__(unet)
        self.context_encoder = context_encoder
        self.context_key = context_key
        self.position_slice = slice(num_image_channels, num_image_channels + position_channels)
        dims = convert_conv_op_to_dim(unet.encoder.conv_op)
        self.pool = (F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[dims - 2]
        self.fusions = nn.ModuleList(TwoWayTextFusion(context_encoder.context_dim, c, dims,
                                                      position_dims=position_channels or None)
                                     for c in unet.encoder.output_channels)
        tokens = getattr(context_encoder, "num_context_tokens", None)  # None: varies (one per field)
        self.position_map = (TextPositionMap(context_encoder.context_dim, position_channels or dims, position_maps,
                                             None if tokens is None else tokens + self.extra_context_tokens,
                                             laterality_contrast)
                             if position_maps else None)
        # the maps also shift the logits directly (text_unet docstring says why)
        self.map_logits = unet.encoder.conv_op(position_maps, unet.decoder.num_classes, 1) if position_maps else None
        self._entries: Optional[list] = None  # only inside conditioned_on()
        self._cached = None  # (entries key, context) while not training: a case's tiles share one context

    @contextmanager
    def conditioned_on(self, entries: Sequence[Mapping]):
        """Condition every call of the network inside the block on these clinical entries."""
        for e in entries:
            if self.context_key not in e:
                raise KeyError(f"Clinical entry {dict(e)!r} has no '{self.context_key}' (this model reads "
                               f"'{self.context_key}').")
        outer = self._entries
        self._entries = [e[self.context_key] for e in entries]
        try:
            yield self
        finally:
            self._entries, self._cached = outer, None

    @property
    def reads_laterality_contrast(self) -> bool:
        return self.position_map is not None and self.position_map.laterality_contrast

    def contexts(self, batch_size: int):
        """(context tokens (B, N, D), those of the entries with left and right swapped, or None when the network does
        not read them), from one pass of the context encoder over both."""
        if self._entries is None:
            raise RuntimeError("This text-conditioned network needs clinical context: call it inside "
                               "`with network.conditioned_on(entries):` (nnunet-prompt predict --prompts with 'text', "
                               "or the trainer does it per batch).")
        entries = self._entries
        if self.reads_laterality_contrast:
            entries = entries + [swap_laterality_in(e) for e in entries]
        if self.training:
            ctx = self.context_encoder(entries)
        else:
            key = repr(entries)
            if self._cached is None or self._cached[0] != key:
                self._cached = (key, self.context_encoder(entries).detach())
            ctx = self._cached[1]
        own, swapped = (ctx.chunk(2) if self.reads_laterality_contrast else (ctx, None))
        return self._for_batch(own, batch_size), None if swapped is None else self._for_batch(swapped, batch_size)

    @staticmethod
    def _for_batch(ctx: torch.Tensor, batch_size: int) -> torch.Tensor:
        if ctx.shape[0] != batch_size:
            if ctx.shape[0] != 1:
                raise RuntimeError(f"{ctx.shape[0]} clinical entries for a batch of {batch_size}.")
            ctx = ctx.expand(batch_size, *ctx.shape[1:])
        return ctx

    def load_state_dict(self, *args, **kwargs):
        self._cached = None  # e.g. the predictor switching folds
        return super().load_state_dict(*args, **kwargs)

    def train(self, mode: bool = True):
        self._cached = None  # weights may change before the next evaluation
        return super().train(mode)

    def forward(self, x: torch.Tensor):
        ctx, swapped = self.contexts(x.shape[0])
        reads_position = self.position_slice.stop > self.position_slice.start
        if reads_position and x.shape[1] < self.position_slice.stop:
            raise RuntimeError(f"This text model reads {self.position_slice.stop - self.position_slice.start} position "
                               f"channels after the image channels, but got {x.shape[1]} channels in all: predict it "
                               "with nnunet-prompt (predict, session), which adds them.")
        position = x[:, self.position_slice] if reads_position else None
        maps = None
        if self.position_map is not None:
            maps = self.position_map(ctx, position if reads_position else self.patch_position(x), swapped)
            maps = maps.to(x.dtype)
            x = torch.cat([x, maps], 1)
        skips = self.unet.encoder(x)
        if reads_position:
            skips = [fuse(s, ctx, self.pool(position, s.shape[2:])) for fuse, s in zip(self.fusions, skips)]
        else:
            skips = [fuse(s, ctx) for fuse, s in zip(self.fusions, skips)]
        out = self.unet.decoder(skips)
        if maps is None:
            return out
        if isinstance(out, (list, tuple)):  # deep supervision: every resolution gets the maps averaged to it
            return [o + self.map_logits(self.pool(maps, o.shape[2:])) for o in out]
        return out + self.map_logits(maps)

    @staticmethod
    def patch_position(x: torch.Tensor) -> torch.Tensor:
        """(B, ndim, *spatial): each voxel's coordinates in the patch, [-1, 1] per axis (the fusions' fallback)."""
        spatial = x.shape[2:]
        grid = patch_coordinates(spatial, x.device, x.dtype).T.reshape(len(spatial), *spatial)
        return grid[None].expand(x.shape[0], *grid.shape)

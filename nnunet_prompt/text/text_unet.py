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
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim

from nnunet_prompt.networks.composed_unet import ComposedUNet
from nnunet_prompt.text.fusion import TwoWayTextFusion


class TextConditionedUNet(ComposedUNet):
    def __init__(self, unet: nn.Module, context_encoder: nn.Module, context_key: str, num_image_channels: int = 0,
                 position_channels: int = 0):
        """context_key: which part of a clinical-text entry the context encoder reads ('text' or 'fields').
        position_channels: how many position channels follow the ``num_image_channels`` image channels (0: none,
        the fusions use patch-relative coordinates)."""
        super().__init__(unet)
        self.context_encoder = context_encoder
        self.context_key = context_key
        self.position_slice = slice(num_image_channels, num_image_channels + position_channels)
        dims = convert_conv_op_to_dim(unet.encoder.conv_op)
        self.pool = (F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[dims - 2]
        self.fusions = nn.ModuleList(TwoWayTextFusion(context_encoder.context_dim, c, dims,
                                                      position_dims=position_channels or None)
                                     for c in unet.encoder.output_channels)
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

    def context(self, batch_size: int) -> torch.Tensor:
        if self._entries is None:
            raise RuntimeError("This text-conditioned network needs clinical context: call it inside "
                               "`with network.conditioned_on(entries):` (nnunet-prompt predict --prompts with 'text', "
                               "or the trainer does it per batch).")
        if self.training:
            ctx = self.context_encoder(self._entries)
        else:
            key = repr(self._entries)
            if self._cached is None or self._cached[0] != key:
                self._cached = (key, self.context_encoder(self._entries).detach())
            ctx = self._cached[1]
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
        ctx = self.context(x.shape[0])
        skips = self.unet.encoder(x)
        if self.position_slice.stop == self.position_slice.start:
            skips = [fuse(s, ctx) for fuse, s in zip(self.fusions, skips)]
        else:
            if x.shape[1] < self.position_slice.stop:
                raise RuntimeError(f"This text model reads {self.position_slice.stop - self.position_slice.start} "
                                   f"position channels after the image channels, but got {x.shape[1]} channels in "
                                   "all: predict it with nnunet-prompt (predict, session), which adds them.")
            position = x[:, self.position_slice]
            skips = [fuse(s, ctx, self.pool(position, s.shape[2:])) for fuse, s in zip(self.fusions, skips)]
        return self.unet.decoder(skips)

"""One network for clinical text and spatial prompts: ``TextConditionedUNet`` around a U-Net whose input is the
image channels, the position channels (``nnunet_prompt.text.image_position``, when the record says so), then the
prompt channels, plus a learned token per target label.

Why the target token: the network has two outputs (background, the prompted object), as every prompt network
(``nnunet_prompt.networks.contract``). A click says which object is meant; text alone does not when the dataset
has several labels ("left tumour, N1" describes the tumour *and* the node). So each pass also names the target
label it predicts: its learned embedding is appended to the context tokens the fusions attend to. With one label
the token is a constant, learned like the rest.

Conditioning as for ``TextConditionedUNet``: ``with network.conditioned_on(entries, targets):`` (one entry and
one target label value per sample, or one of each for every tile of a case). The trainer may name the targets
later inside the block (``set_targets``), once it has drawn them for the batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from nnunet_prompt.text.text_unet import TextConditionedUNet


class TextAndPromptUNet(TextConditionedUNet):
    extra_context_tokens = 1  # the target label's token

    def __init__(self, unet: nn.Module, context_encoder: nn.Module, context_key: str, num_target_tokens: int,
                 num_image_channels: int = 0, position_channels: int = 0, position_maps: int = 0,
                 laterality_contrast: bool = False):
        """num_target_tokens: one more than the largest label value (a token per label value; 0 is never used)."""
        super().__init__(unet, context_encoder, context_key, num_image_channels, position_channels, position_maps,
                         laterality_contrast)
        # the scale of the standardised context tokens (unit variance), so no token drowns the others at the start
        self.target_tokens = nn.Parameter(torch.randn(num_target_tokens, context_encoder.context_dim))
        self._targets: Optional[torch.Tensor] = None

    @contextmanager
    def conditioned_on(self, entries: Sequence[Mapping], targets: Optional[Sequence[int]] = None):
        outer = self._targets
        self.set_targets(targets)
        try:
            with super().conditioned_on(entries):
                yield self
        finally:
            self._targets = outer

    def set_targets(self, targets: Optional[Sequence[int]]) -> None:
        """The target label value of each sample (or one for all), for the calls inside ``conditioned_on``."""
        if targets is None:
            self._targets = None
            return
        t = torch.as_tensor([int(v) for v in targets], dtype=torch.long)
        if t.numel() == 0 or int(t.min()) < 1 or int(t.max()) >= self.target_tokens.shape[0]:
            raise ValueError(f"Target label values {t.tolist()}: this network knows the labels "
                             f"1..{self.target_tokens.shape[0] - 1}.")
        self._targets = t

    def contexts(self, batch_size: int):
        own, swapped = super().contexts(batch_size)
        if self._targets is None:
            raise RuntimeError("This network predicts one target label at a time: name it with "
                               "`conditioned_on(entries, targets=[label value, ...])`.")
        tokens = self.target_tokens[self._targets.to(self.target_tokens.device)].to(own.dtype)
        if tokens.shape[0] != batch_size:
            if tokens.shape[0] != 1:
                raise RuntimeError(f"{tokens.shape[0]} target labels for a batch of {batch_size}.")
            tokens = tokens.expand(batch_size, -1)
        return tuple(None if c is None else torch.cat([c, tokens[:, None]], 1) for c in (own, swapped))

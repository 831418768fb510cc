"""Text-steered position channels: the clinical context turned into maps over the voxel positions, as input.

The fusions (``nnunet_prompt.text.fusion``) let image features attend to the context tokens, with the voxel's
position as their positional embedding. For "left-sided tumour" the network must then combine three things deep
inside: the lesion in the image, the voxel's side, and the side in the text. Measured on the phantom whose patch
is narrower than half the body, that was not learned in 600 iterations (benchmarks/RESULTS.md).

So the network also gets K maps computed from the context and the position channels. Map k is an affine function
of the voxel's position whose coefficients the context chooses:

    m_k(x) = a_k(context) . p(x) + b_k(context),    (a_k, b_k) = tanh(W_k c + w_k)

with p(x) the position channels (the whole image's coordinates, ``nnunet_prompt.text.image_position``), c the
context tokens, concatenated (their mean when an encoder's token count varies: the numeric categories, one token per
field), and W_k, w_k learned. "Left" can give m_k = +x, "right" m_k = -x: a map that is high on the named side, in
the patient's whole image, on every patch. The U-Net reads the maps as extra input channels, after all others, as
the prompt trainers' networks read a click's map, and a 1x1 convolution of them is added to its logits
(``TextConditionedUNet`` says why). A constant term lets the text switch a target on or off everywhere (e.g. "N1"
for the nodes). Not in LLMSeg: added because the fusions alone did not learn laterality on CT-like patches.

Measured on a crop-trained phantom (ten wordings, 200 notes, side predicted from the coefficients with a logistic
loss): from the concatenated tokens the side was learned for held-out notes (100 %); read through an attention over
the tokens, as ``TextTokenReadout`` reads, it was not (47-52 %): averaging mixes the tokens that carry the side with
those that carry the wording. The tanh bounds the maps to the scale of the position channels: unbounded, Adam's
steps on the wide dot product grew them to hundreds within 100 steps, and the U-Net stopped predicting anything.

With patch-relative position (models recorded before position channels, the ``_patchPosition`` ablation) the maps
use the patch's own coordinates, which cannot say which side of the body a patch is on.

Laterality contrast (``laterality_contrast``): with ten wordings of the notes the side is 1-2 % of the context's
variance (benchmarks/RESULTS.md), and trained end to end through the U-Net the read-out above did not find it in
600-1,800 iterations: each step's gradient on W is dominated by the wording. So the slopes can instead read the
difference between the context of the text and that of the same text with left and right swapped
(``nnunet_prompt.text.perturbation.swap_laterality``, the swap of the text analysis), and the constant their mean:

    a_k = tanh(W_a (c(t) - c(t')))        b_k = tanh(W_b (c(t) + c(t')) / 2 + w_b)

The difference holds the side and nothing of the wording (0 for a text that names no side), and swapping the
sides negates it, so the maps follow a swap exactly: a(t') = -a(t). The same ``coefficients`` layer holds W_a and
W_b. Not in LLMSeg; it costs a second pass of the language model over the swapped texts.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class TextPositionMap(nn.Module):
    def __init__(self, context_dim: int, position_dims: int, num_maps: int, num_tokens: Optional[int] = None,
                 laterality_contrast: bool = False):
        """num_tokens: how many context tokens the encoder gives (None: varies; the maps then read their mean).
        laterality_contrast: the slopes read the context minus the side-swapped text's (``forward``'s
        ``swapped_context``), the constant their mean (module docstring)."""
        super().__init__()
        self.position_dims, self.num_maps, self.num_tokens = int(position_dims), int(num_maps), num_tokens
        self.laterality_contrast = bool(laterality_contrast)
        # nn.Linear's initialisation gives coefficients of order one before the tanh (the context is standardised)
        self.coefficients = nn.Linear(context_dim * (num_tokens or 1), self.num_maps * (self.position_dims + 1))

    def read(self, context: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N*D): the tokens concatenated (their mean when the token count varies)."""
        if self.num_tokens is None:
            read = context.mean(1)
        elif context.shape[1] != self.num_tokens:
            raise RuntimeError(f"The position maps read {self.num_tokens} context tokens, got {context.shape[1]}.")
        else:
            read = context.flatten(1)
        return read.to(self.coefficients.weight.dtype)

    def coefficients_of(self, context: torch.Tensor, swapped_context: Optional[torch.Tensor] = None):
        """(slopes (B, K, P), constant (B, K)), bounded by tanh."""
        shape = (-1, self.num_maps, self.position_dims + 1)
        if not self.laterality_contrast:
            c = torch.tanh(self.coefficients(self.read(context))).view(shape)
            return c[:, :, :-1], c[:, :, -1]
        if swapped_context is None:
            raise RuntimeError("These position maps read the laterality contrast: pass the side-swapped text's "
                               "context.")
        own, swapped = self.read(context), self.read(swapped_context)
        w, bias = self.coefficients.weight.view(self.num_maps, self.position_dims + 1, -1), self.coefficients.bias
        slopes = torch.tanh(torch.einsum("kpd,bd->bkp", w[:, :-1], own - swapped))  # no bias: a(t') = -a(t)
        constant = torch.tanh(torch.einsum("kd,bd->bk", w[:, -1], (own + swapped) / 2)
                              + bias.view(self.num_maps, -1)[:, -1])
        return slopes, constant

    def forward(self, context: torch.Tensor, position: torch.Tensor,
                swapped_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """context (B, N, D), position (B, P, *spatial) -> maps (B, K, *spatial); swapped_context (B, N, D): the
        context of the texts with left and right swapped (only with ``laterality_contrast``)."""
        slopes, constant = self.coefficients_of(context, swapped_context)
        maps = torch.einsum("bkp,bp...->bk...", slopes, position.to(slopes.dtype))
        return maps + constant.reshape(*constant.shape, *([1] * (position.dim() - 2)))

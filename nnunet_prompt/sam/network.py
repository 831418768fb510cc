"""SAM-RT's segmentation network: frozen SAM ViT encoder with LoRA on query and value, a fully
trained mask decoder predicting k semantic masks, and optionally SAM-RT's prompt path (E_p, GaRPA, ProViCMA).

Input: (B, image channels + prompt channels, S, S) with S the planned square patch; output: (B, k, S, S)
logits (softmax over k classes, nnU-Net's loss), upsampled bilinearly to the patch size. No deep supervision.

The mask decoder is a small convolutional head, not SAM's prompt-token decoder: SAM's decoder produces one
mask per output token through a hypernetwork and is built around sparse prompt tokens and ambiguity masks;
k semantic classes are one dense per-pixel softmax, which a head on the image embedding gives directly
(two stride-2 transposed convolutions as in SAM's own output upscaling, then a 1x1 class layer). Prompts
reach it densely (f_p), as SAM's dense mask prompt does. The price: SAM's pretrained decoder weights are not
used (SAM-RT fine-tunes all decoder parameters anyway).

Prompt injection:
* without GaRPA, f_p is added once to the image embedding (SAM's dense-prompt addition);
* GaRPA (eq. 1): f_in(l+1) = g(l) · f_p + f_out(l) after every encoder block l (f_p projected to the token
  width), and g_dec · f_p added to the image embedding for the decoder; encoder gates start at 0 (the
  pretrained encoder is undisturbed at the start), the decoder gate at 1 (GaRPA then starts from the
  no-GaRPA model);
* ProViCMA replaces f_p at the decoder by f_duo = f_pv + f_vp of f_p and the image embedding f_v.

Small checkpoints: ``state_dict`` leaves out the encoder weights that come from the SAM base file (everything
under ``encoder.`` except LoRA matrices) and ``load_state_dict`` accepts their absence, so nnU-Net's own
checkpoint saving/loading, its predictor and the interactive session handle trainable weights only. A
4-number fingerprint of the base (``sam_base_fingerprint``) is stored and checked, so weights trained on one
base are never loaded onto another. Randomly initialised encoders (no base file) are stored whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_prompt.sam.checkpoint import load_sam_image_encoder, random_sam_image_encoder, sam_vision_config
from nnunet_prompt.sam.intensity import SAMInputAdapter
from nnunet_prompt.sam.lora import STAGE1, STAGE2, SeqLoRAWeights, add_lora, freeze_base, split_qkv
from nnunet_prompt.sam.model_info import SAMModelInfo
from nnunet_prompt.sam.prompt_fusion import PromptVisualEncoder, ProViCMA


@dataclass(frozen=True)
class SAMNetworkOptions:
    lora_rank: int = 4
    seqlora: bool = False     # stage 2 of SeqLoRA: frozen stage-1 adapter + new adapter, learnable alpha/beta
    garpa: bool = False
    provicma: bool = False


class SAMSegmentationNet(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, input_adapter: SAMInputAdapter,
                 num_prompt_channels: int = 0, options: SAMNetworkOptions = SAMNetworkOptions(),
                 store_frozen: bool = False, base_fingerprint: Sequence[int] = (0, 0, 0, 0)):
        super().__init__()
        config = encoder.config
        self.image_size = config.image_size
        self.options = options
        self.store_frozen = store_frozen
        self.num_image_channels = input_adapter.num_channels
        self.num_prompt_channels = num_prompt_channels
        self.register_buffer("sam_base_fingerprint", torch.tensor(list(base_fingerprint), dtype=torch.int64))
        self.input_adapter = input_adapter

        split_qkv(encoder)
        add_lora(encoder, options.lora_rank, STAGE1)
        if options.seqlora:
            add_lora(encoder, options.lora_rank, STAGE2)
            self.seqlora = SeqLoRAWeights()
            self.seqlora.attach(encoder)
            freeze_base(encoder, [STAGE2])      # stage-1 adapter frozen, as the base
        else:
            freeze_base(encoder, [STAGE1])
        self.encoder = encoder

        d = config.output_channels
        if num_prompt_channels:
            self.prompt_encoder = PromptVisualEncoder(3, num_prompt_channels, d, config.patch_size)
            if options.garpa:
                self.prompt_to_tokens = nn.Linear(d, config.hidden_size)
                self.encoder_gates = nn.Parameter(torch.zeros(config.num_hidden_layers))
                self.decoder_gate = nn.Parameter(torch.ones(()))
            if options.provicma:
                self.provicma = ProViCMA(d)
        elif options.garpa or options.provicma:
            raise ValueError("GaRPA and ProViCMA act on prompts: they need prompt channels")

        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(d, d // 2, 2, stride=2), nn.GroupNorm(min(8, d // 2), d // 2), nn.GELU(),
            nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2), nn.GELU(),
            nn.Conv2d(d // 4, d // 4, 3, padding=1), nn.GELU(),
            nn.Conv2d(d // 4, num_classes, 1))

    # ------------------------------------------------------------------ forward
    def _encode(self, pixels: torch.Tensor, f_p: Optional[torch.Tensor]) -> torch.Tensor:
        enc = self.encoder
        x = enc.patch_embed(pixels)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        tokens = None
        if f_p is not None and self.options.garpa:
            tokens = self.prompt_to_tokens(f_p.permute(0, 2, 3, 1))  # (B, h, w, hidden), channels last as x
        for l, layer in enumerate(enc.layers):
            out = layer(x)
            x = out[0] if isinstance(out, tuple) else out
            if tokens is not None:
                x = x + self.encoder_gates[l] * tokens  # GaRPA, eq. 1
        return enc.neck(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this SAM network takes {self.image_size}x{self.image_size} patches, got "
                             f"{tuple(x.shape[-2:])}")
        image = x[:, :self.num_image_channels]
        pixels = self.input_adapter(image)
        f_p = None
        if self.num_prompt_channels:
            f_p = self.prompt_encoder(pixels, x[:, self.num_image_channels:])
        f_v = self._encode(pixels, f_p)
        if f_p is not None:
            prompt = self.provicma(f_p, f_v) if self.options.provicma else f_p
            f_v = f_v + (self.decoder_gate * prompt if self.options.garpa else prompt)
        logits = self.decoder(f_v)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    # ------------------------------------------------------- small checkpoints
    @staticmethod
    def is_base_key(key: str) -> bool:
        """Weights that come from the SAM base file (frozen, rebuilt at every build)."""
        return key.startswith("encoder.") and ".lora_" not in key

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        sd = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        if not self.store_frozen:
            for k in [k for k in sd if k.startswith(prefix) and self.is_base_key(k[len(prefix):])]:
                del sd[k]
        return sd

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        fp = state_dict.get("sam_base_fingerprint")
        if fp is not None and not torch.equal(fp.cpu(), self.sam_base_fingerprint.cpu()):
            raise RuntimeError(
                f"these weights were trained on another SAM base (width, depth, patch, file size "
                f"{fp.tolist()}) than the one this network was built from ({self.sam_base_fingerprint.tolist()}); "
                f"set NNUNET_PROMPT_SAM_CHECKPOINT to the model's base file (the 'sam' entry of its plans.json record)")
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if self.store_frozen or not self.is_base_key(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"SAM network weights do not match: missing {missing[:5]}"
                               f"{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}")
        return result


def build_sam_network(info: SAMModelInfo, image_size: int, num_classes: int, normalization_schemes: Sequence[str],
                      intensity_properties: Dict[str, dict], num_prompt_channels: int = 0,
                      options: SAMNetworkOptions = SAMNetworkOptions()) -> SAMSegmentationNet:
    adapter = SAMInputAdapter(normalization_schemes, intensity_properties, info.pixel_norm)
    if info.base is None:
        encoder = random_sam_image_encoder(sam_vision_config(info.random_variant, image_size))
        fingerprint = (0, 0, 0, 0)
    else:
        encoder, _ = load_sam_image_encoder(info.base.path, image_size)
        b = info.base
        fingerprint = (b.hidden_size, b.num_hidden_layers, b.patch_size, b.num_bytes)
    return SAMSegmentationNet(encoder, num_classes, adapter, num_prompt_channels, options,
                              store_frozen=info.base is None, base_fingerprint=fingerprint)

"""The AutoSAM Adapter network (Fig. 2A): the 3D-adapted SAM encoder, the Auto Prompt Generator (§3.3)
and the multi-layer aggregation mask decoder (§3.4), for nnU-Net's sliding-window inference.

* Input channels: nnU-Net's C image channels (normalised by nnU-Net: CT or z-score, i.e. values of about unit
  scale, like SAM's ImageNet-normalised pixels) are mapped to SAM's 3 by a trainable 1x1x1 convolution that
  starts as the channel mean copied to R, G and B: a grey image, which is how a single CT channel looks to SAM.
* APG: a light 3D U-Net (nnU-Net's own ``PlainConvUNet`` building blocks, trained from scratch) on the last
  block's features; its output has the bottleneck's width and is added to the image embedding, as SAM adds a
  dense prompt embedding. No manual prompt is needed.
* Decoder: the image(+prompt) embedding and, with multi-layer aggregation, the four stage features (SAM's global
  blocks), each projected to ``decoder_channels``, concatenated and fused at the token grid; upsampled x4 by two
  transposed convolutions (as SAM's mask decoder upscales) and then trilinearly to the input size; concatenated
  with the input image and fused by a final 3D convolution block into the class logits. Everything here trains.

No deep supervision: one full-resolution output (AutoSAM Adapter has none), so the trainers switch it off in nnU-Net.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_prompt.sam.adapter3d import SAMEncoder3D, frozen_parameter_names


@dataclass(frozen=True)
class AutoSAMOptions:
    use_apg: bool = True                  # Table 3: auto prompt generator on / off
    use_multilayer_aggregation: bool = True  # Table 3: multi-layer aggregation on / off
    window_size: int = 8                  # 3D attention window of SAM's windowed blocks, in tokens per axis
    adapter_ratio: float = 0.25           # adapter bottleneck width / ViT width
    apg_features: int = 32                # APG width at its first stage
    decoder_channels: int = 64

    def as_dict(self) -> dict:
        return asdict(self)


def _conv_block(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, k, padding=k // 2), nn.InstanceNorm3d(cout, affine=True),
                         nn.LeakyReLU(inplace=True))


class AutoPromptGenerator(nn.Module):
    """§3.3: a 3D U-Net-like encoder-decoder on the last block's features -> prompt embedding."""

    def __init__(self, in_channels: int, out_channels: int, grid: Sequence[int], features: int = 32):
        super().__init__()
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
        # halve every even axis that stays >= 2 tokens (instance norm needs more than one voxel); at most 3 stages
        strides, size = [[1, 1, 1]], list(grid)
        while len(strides) < 3:
            s = [2 if g >= 4 and g % 2 == 0 else 1 for g in size]
            if s == [1, 1, 1]:
                break
            strides.append(s)
            size = [g // f for g, f in zip(size, s)]
        if len(strides) < 2:
            raise ValueError(f"the token grid {list(grid)} is too small for the APG's U-Net (needs >= 4 tokens along "
                             f"an axis); use a larger patch or a smaller ViT patch")
        n = len(strides)
        self.unet = PlainConvUNet(in_channels, n, [features * 2 ** i for i in range(n)], nn.Conv3d, 3, strides, 2,
                                  out_channels, 2, conv_bias=True, norm_op=nn.InstanceNorm3d,
                                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                                  nonlin_kwargs={"inplace": True}, deep_supervision=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)


class AggregationDecoder3D(nn.Module):
    def __init__(self, embed_channels: int, hidden: int, num_stages: int, image_channels: int, num_classes: int,
                 vit_patch: int, channels: int = 64, multilayer: bool = True):
        super().__init__()
        self.multilayer = multilayer
        self.embed_proj = _conv_block(embed_channels, channels, 1)
        self.stage_proj = nn.ModuleList(_conv_block(hidden, channels, 1) for _ in range(num_stages)) if multilayer \
            else nn.ModuleList()
        self.fuse = _conv_block(channels * (1 + len(self.stage_proj)), channels)
        up = []
        c = channels
        if vit_patch % 4 == 0:  # SAM's mask decoder upscales x4 with two transposed convolutions
            for _ in range(2):
                up += [nn.ConvTranspose3d(c, c // 2, 2, stride=2), nn.InstanceNorm3d(c // 2, affine=True),
                       nn.LeakyReLU(inplace=True)]
                c //= 2
        self.upscale = nn.Sequential(*up)
        self.head = nn.Sequential(_conv_block(c + image_channels, c), nn.Conv3d(c, num_classes, 1))

    def forward(self, image: torch.Tensor, embedding: torch.Tensor, stages: List[torch.Tensor]) -> torch.Tensor:
        feats = [self.embed_proj(embedding)] + [p(s) for p, s in zip(self.stage_proj, stages)]
        m = self.upscale(self.fuse(torch.cat(feats, 1)))
        m = F.interpolate(m, size=image.shape[2:], mode="trilinear", align_corners=False)
        return self.head(torch.cat([m, image], 1))


class AutoSAMAdapter3D(nn.Module):
    def __init__(self, encoder: SAMEncoder3D, image_channels: int, num_classes: int,
                 options: AutoSAMOptions = AutoSAMOptions()):
        super().__init__()
        self.options = options
        self.to_rgb = nn.Conv3d(image_channels, 3, 1)
        with torch.no_grad():  # the channel mean as a grey RGB image
            self.to_rgb.weight.fill_(1.0 / image_channels)
            self.to_rgb.bias.zero_()
        self.encoder = encoder
        self.apg = AutoPromptGenerator(encoder.hidden_size, encoder.out_channels, encoder.grid,
                                       options.apg_features) if options.use_apg else None
        self.decoder = AggregationDecoder3D(encoder.out_channels, encoder.hidden_size, len(encoder.stage_indexes),
                                            image_channels, num_classes, encoder.vit_patch_size,
                                            options.decoder_channels, options.use_multilayer_aggregation)
        self.freeze_pretrained()

    def frozen_parameter_names(self) -> List[str]:
        return frozen_parameter_names(self.encoder, "encoder.")

    def freeze_pretrained(self) -> None:
        frozen = set(self.frozen_parameter_names())
        for name, p in self.named_parameters():
            p.requires_grad_(name not in frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding, stages, last = self.encoder(self.to_rgb(x))
        if self.apg is not None:
            embedding = embedding + self.apg(last)
        return self.decoder(x, embedding, stages)


def exclude_from_checkpoints(network: nn.Module, names: Sequence[str]) -> None:
    """Keep the given parameters (the frozen SAM weights, rebuilt from the SAM file) out of the network's
    state dict, and accept state dicts without them. nnU-Net's checkpoints then hold only what training
    changed (a few MB instead of ViT-B's 360 MB), and nnU-Net's strict load_state_dict still checks the rest."""
    names = set(names)

    def drop(module, state_dict, prefix, local_metadata):
        for n in names:
            state_dict.pop(prefix + n, None)

    def accept_missing(module, incompatible):
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                        if k not in names and k.split(".", 1)[-1] not in names]

    network.register_state_dict_post_hook(drop)
    network.register_load_state_dict_post_hook(accept_missing)


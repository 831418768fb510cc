"""MedSAM as an nnU-Net prompt network: SAM's image encoder, prompt encoder and mask decoder (transformers'
``SamModel``, weights from an official SAM or MedSAM file) prompted by the boxes of the box channel, as the
MedSAM study uses it (one box per object and slice, ``multimask_output=False``).

Contract (``nnunet_prompt.networks.contract``): input (B, C_img + C_prompt, S, S), S the planned square 2D patch,
the prompt channels in ``PromptEncoding``'s layout, of which only ``box`` is read (clicks and the previous mask
are ignored: the MedSAM study prompts with boxes only). Output (B, 2, S, S) logits: channel 0 is 0 and channel 1
the mask logit, so nnU-Net's softmax over the two classes equals sigmoid(mask logit), MedSAM's own output.

* Boxes: every 8-connected component of the box channel (> 0.5) on a slice is one box, its bounding rectangle
  the SAM box (x0, y0, x1, y1) in pixel indices, x the last axis (columns), as MedSAM computes boxes from
  masks. Boxes that overlap or touch form one component and therefore merge into one box: give objects of one
  label that should be prompted separately non-touching boxes. Components come from the project's batched
  torch labelling (``label_components``, 26-connected in 3D, i.e. 8-connected on a one-slice volume), so boxes
  are found on the input's device without a round trip to the CPU.
* Pixels: ``SAMInputAdapter`` (pixel_norm ``unit``: MedSAM's [0, 1]; ``imagenet``: SAM's pixel mean/std), then a
  bilinear resize S -> the model's input size (1024 for official files; antialiased when shrinking). The
  patch is square, so SAM's longest-side resize is this plain resize and needs no padding. Boxes are scaled by
  the same factor (MedSAM: box / original size * 1024).
* One image embedding per sample with at least one box; the prompt encoder and mask decoder run on all boxes
  of the batch at once (padded to the largest box count per sample); the low-resolution masks (input / 4) are
  upsampled bilinearly to S. Several boxes on a slice: the union, the elementwise max of their mask logits.
  A slice without a box: channel 1 is ``BACKGROUND_LOGIT`` everywhere (probability ~5e-5), and at inference
  the encoder is skipped for it.

Fine-tuning (``finetune``): ``full`` (MedSAM: image encoder, prompt encoder and mask decoder trained), ``frozen_encoder`` (mask
decoder only), ``lora`` (LoRA on the encoder's query/value projections, ``nnunet_prompt.sam.lora``, encoder base
frozen, mask decoder trained). In every mode the prompt encoder's box corner embeddings and no-mask embedding are
trained; its point, mask and padding embeddings, which a box never reaches, are frozen (DDP without
``find_unused_parameters`` requires a gradient for every trainable parameter). For the same reason the IoU head is
kept in the graph of ``logits`` with weight 0 (a loss on the logits alone, nnU-Net's, still reaches it), and a
training batch without any box runs the model on one dummy box whose output is multiplied by 0.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamConfig, SamModel

from nnunet_prompt.interaction.simulation import label_components
from nnunet_prompt.prompts.encoding import BOX, PROMPT_CHANNELS
from nnunet_prompt.sam.checkpoint import SAMCheckpointError
from nnunet_prompt.sam.full_model import load_sam_model, random_sam_model
from nnunet_prompt.sam.intensity import SAMInputAdapter
from nnunet_prompt.sam.lora import STAGE1, add_lora, freeze_base, split_qkv

FINETUNE_MODES = ("full", "frozen_encoder", "lora")
BACKGROUND_LOGIT = -10.0


class MedSAMOutput(NamedTuple):
    logits: torch.Tensor           # (B, 2, S, S): 0 and the mask logit (union over the sample's boxes)
    box_sample: torch.Tensor       # (N,) long: the sample each box belongs to
    boxes: torch.Tensor            # (N, 4) float: (x0, y0, x1, y1) in patch pixels, x = last axis
    box_logits: torch.Tensor       # (N, S, S): each box's own mask logit
    iou_predictions: torch.Tensor  # (N,): the decoder's predicted IoU of each box's mask (MedSAM's IoU loss)


def boxes_from_channel(box_channel: torch.Tensor):
    """(B, S, S) box channel -> (box_sample (N,), boxes (N, 4) as x0, y0, x1, y1), one box per 8-connected
    component (bounding rectangle, pixel indices), ordered by sample."""
    mask = box_channel > 0.5
    b, h, w = mask.shape
    if not bool(mask.any()):
        empty = torch.zeros((0, 4), device=mask.device)
        return torch.zeros(0, dtype=torch.long, device=mask.device), empty
    labels = label_components(mask[..., None])[..., 0]          # (B, S, S), unique over the batch
    fg = labels > 0
    ids, inverse = torch.unique(labels[fg], return_inverse=True)
    sample, row, col = torch.nonzero(fg, as_tuple=True)       # same (row-major) order as labels[fg]
    n = ids.numel()

    def reduce(values, how):
        out = torch.full((n,), -1 if how == "amax" else h * w, device=values.device, dtype=values.dtype)
        return out.scatter_reduce(0, inverse, values, how)

    boxes = torch.stack([reduce(col, "amin"), reduce(row, "amin"), reduce(col, "amax"), reduce(row, "amax")], 1)
    box_sample = reduce(sample, "amin")
    order = torch.argsort(box_sample, stable=True)
    return box_sample[order], boxes[order].float()


class MedSAMNetwork(nn.Module):
    def __init__(self, sam: SamModel, input_adapter: SAMInputAdapter, num_prompt_channels: int = len(PROMPT_CHANNELS),
                 finetune: str = "full", lora_rank: int = 4, box_channel: int = BOX):
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"MedSAM fine-tuning mode {finetune!r} unknown; choose one of {FINETUNE_MODES}")
        if box_channel >= num_prompt_channels:
            raise ValueError(f"the box is prompt channel {box_channel}, but the network takes only "
                             f"{num_prompt_channels} prompt channels")
        self.sam = sam
        self.input_adapter = input_adapter
        self.num_image_channels = input_adapter.num_channels
        self.num_prompt_channels = num_prompt_channels
        self.box_channel = box_channel
        self.finetune = finetune
        self.image_size = sam.config.vision_config.image_size

        for p in sam.parameters():
            p.requires_grad = True
        if finetune == "lora":
            split_qkv(sam.vision_encoder)
            add_lora(sam.vision_encoder, lora_rank, STAGE1)
            freeze_base(sam.vision_encoder, [STAGE1])
        elif finetune == "frozen_encoder":
            sam.vision_encoder.requires_grad_(False)
        # The prompt encoder is trained where a box reaches it (corner embeddings, the no-mask embedding), as
        # LiteMedSAM's training does. Its point, padding and mask embeddings never see a box-only prompt: frozen, as
        # DDP (no find_unused_parameters) needs a gradient for every trainable parameter. The Fourier position
        # table is a fixed buffer in SAM's own code and stays fixed.
        sam.prompt_encoder.requires_grad_(False)
        sam.shared_image_embedding.requires_grad_(False)
        for embedding in (sam.prompt_encoder.point_embed[2], sam.prompt_encoder.point_embed[3],
                          sam.prompt_encoder.no_mask_embed):
            embedding.requires_grad_(True)

    def _pixels(self, image: torch.Tensor) -> torch.Tensor:
        pixels = self.input_adapter(image)
        size = pixels.shape[-1]
        if size == self.image_size:
            return pixels
        return F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                             antialias=size > self.image_size)

    def forward(self, x: torch.Tensor, return_boxes: bool = False):
        b, c, h, w = x.shape
        if h != w:
            raise ValueError(f"MedSAM takes square 2D patches, got {h}x{w}")
        if c != self.num_image_channels + self.num_prompt_channels:
            raise ValueError(f"MedSAM network expects {self.num_image_channels} image + {self.num_prompt_channels} "
                             f"prompt channels, got {c}")
        box_sample, boxes = boxes_from_channel(x[:, self.num_image_channels + self.box_channel])
        dummy = boxes.shape[0] == 0 and self.training and torch.is_grad_enabled()
        if dummy:  # keep every trainable parameter in the graph (DDP), contributing 0
            box_sample = torch.zeros(1, dtype=torch.long, device=x.device)
            boxes = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]], device=x.device)

        background = torch.full((b, h, w), BACKGROUND_LOGIT, device=x.device, dtype=x.dtype)
        if boxes.shape[0] == 0:
            logits = torch.stack([torch.zeros_like(background), background], 1)
            if not return_boxes:
                return logits
            return MedSAMOutput(logits, box_sample, boxes, x.new_zeros((0, h, w)), x.new_zeros((0,)))

        # samples with boxes, and each box's slot in a (samples, max boxes) grid for one batched decoder call
        samples, box_row, counts = torch.unique(box_sample, return_inverse=True, return_counts=True)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(boxes.shape[0], device=x.device) - first[box_row]
        n_max = int(counts.max())
        scale = self.image_size / w
        grid = boxes.new_zeros((samples.numel(), n_max, 4))
        grid[:, :, 2:] = 1.0  # padding boxes: any valid box, their outputs are dropped
        grid[box_row, slot] = boxes * scale

        embeddings = self.sam.vision_encoder(self._pixels(x[samples, :self.num_image_channels])).last_hidden_state
        out = self.sam(image_embeddings=embeddings, input_boxes=grid, multimask_output=False)
        low_res = out.pred_masks[box_row, slot, 0]      # (N, S_in / 4, S_in / 4)
        iou = out.iou_scores[box_row, slot, 0]          # (N,)
        box_logits = F.interpolate(low_res[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        box_logits = box_logits.to(x.dtype)
        if dummy:
            box_logits = box_logits * 0.0 + BACKGROUND_LOGIT
            iou = iou * 0.0
        # union over a sample's boxes; samples without a box keep the background logit (include_self=False)
        index = box_sample.view(-1, 1, 1).expand_as(box_logits)
        mask_logit = background.scatter_reduce(0, index, box_logits, "amax", include_self=False)
        mask_logit = mask_logit + 0.0 * out.iou_scores.sum()   # IoU head in the graph for DDP, value unchanged
        logits = torch.stack([torch.zeros_like(mask_logit), mask_logit], 1)
        if not return_boxes:
            return logits
        if dummy:
            return MedSAMOutput(logits, box_sample[:0], boxes[:0], box_logits[:0], iou[:0])
        return MedSAMOutput(logits, box_sample, boxes, box_logits, iou)


def build_medsam_network(sam_config: Optional[SamConfig], weights_path: Optional[str], pixel_norm: str,
                         normalization_schemes: Sequence[str], intensity_properties: Dict[str, dict],
                         finetune: str = "full", lora_rank: int = 4,
                         num_prompt_channels: int = len(PROMPT_CHANNELS)) -> MedSAMNetwork:
    """The network a MedSAM trainer trains. weights_path: an official SAM / MedSAM file (its config is read from
    it; a given sam_config must agree), or None for random initialisation from sam_config (a trained model is
    rebuilt so from its plans record, ``SamConfig.to_dict()``, and then gets its checkpoint's weights)."""
    if weights_path is not None:
        sam, config = load_sam_model(weights_path)
        if sam_config is not None and config_signature(sam_config) != config_signature(config):
            raise SAMCheckpointError(f"{weights_path!r} holds a SAM of sizes {config_signature(config)}, the plans "
                                     f"record {config_signature(sam_config)}; give the file the model was built from")
    elif sam_config is None:
        raise ValueError("MedSAM needs a SAM config or a weights file")
    else:
        sam = random_sam_model(sam_config)
    adapter = SAMInputAdapter(normalization_schemes, intensity_properties, pixel_norm)
    return MedSAMNetwork(sam, adapter, num_prompt_channels, finetune, lora_rank)


def config_signature(config: SamConfig) -> tuple:
    """The sizes that decide whether weights fit a SamConfig."""
    v, p, d = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    return (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.mlp_dim, v.output_channels, v.patch_size,
            v.image_size, v.window_size, tuple(v.global_attn_indexes), v.num_pos_feats, p.hidden_size,
            p.mask_input_channels, d.hidden_size, d.num_hidden_layers, d.num_attention_heads, d.mlp_dim,
            d.num_multimask_outputs, d.iou_head_depth, d.iou_head_hidden_dim)

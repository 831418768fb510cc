"""The whole Segment Anything model (image encoder + prompt encoder + mask decoder) from official SAM or MedSAM
checkpoint files, as transformers' ``SamModel``: the base of the MedSAM study's zero-shot and fine-tuned models.

A module of its own beside ``checkpoint.py``: that one loads the image encoder alone (SAM-RT and the AutoSAM
adapter replace SAM's decoder and never read the rest of the file); this one needs and checks the prompt encoder
and the mask decoder too, and reuses the encoder renaming and size inference from there.

Official files (``sam_vit_b_01ec64.pth``, ``medsam_vit_b.pth``; the latter sometimes nested under ``"model"``)
hold ``image_encoder.*``, ``prompt_encoder.*`` and ``mask_decoder.*``. The renaming below is the mapping
transformers' own conversion script applies (not shipped in the wheel), written as an explicit table:

* prompt encoder: ``pe_layer.positional_encoding_gaussian_matrix`` is SAM's one random-Fourier position table;
  transformers keeps it twice (``shared_image_embedding`` for the image-wide encoding, tied to
  ``prompt_encoder.shared_embedding``), both are filled from it; ``point_embeddings.i`` -> ``point_embed.i``;
  ``mask_downscaling.{0,1,3,4,6}`` -> ``mask_embed.{conv1,layer_norm1,conv2,layer_norm2,conv3}``;
* mask decoder: ``norm*`` -> ``layer_norm*``; ``output_upscaling.{0,1,3}`` -> ``upscale_conv1``,
  ``upscale_layer_norm``, ``upscale_conv2``; the MLPs' ``layers.0`` / ``layers.i`` / ``layers.last`` ->
  ``proj_in`` / ``layers.(i-1)`` / ``proj_out`` (depth read from the file).

Sizes are read off the tensor shapes (``infer_sam_config``), so tiny test models and vit_b/l/h load through the
same code. One hyper-parameter is invisible in the shapes: the mask decoder's number of attention heads (the
projections are shared by all heads). Every published SAM decoder (SAM, MedSAM, LiteMedSAM, MobileSAM) has 8,
the default here. The decoder's transformer LayerNorms use eps 1e-5 (PyTorch's default, which
segment-anything uses there; transformers' config default is 1e-6), so outputs match the official code.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Tuple

import torch
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

from nnunet_prompt.sam.checkpoint import (ENCODER_PREFIX, NameTable, SAM_PRETRAINING_IMAGE_SIZE, SAMCheckpointError,
                                          image_encoder_state_dict, infer_vision_config,
                                          official_image_encoder_state_dict, read_sam_checkpoint, sam_vision_config)

PROMPT_PREFIX = "prompt_encoder."
DECODER_PREFIX = "mask_decoder."
SAM_DECODER_HEADS = 8  # not readable from the weights; the value of every published SAM decoder
_DROPPED = ("pixel_mean", "pixel_std")  # buffers some exports carry; SAMInputAdapter does the normalisation
_PE_OFFICIAL = "pe_layer.positional_encoding_gaussian_matrix"
_PE_HF = ("shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding")
FULL_FILE_HINT = ("zero-shot MedSAM needs the full SAM or MedSAM file, e.g. sam_vit_b_01ec64.pth or "
                  "medsam_vit_b.pth")

# official suffix (after 'prompt_encoder.' / 'mask_decoder.') <-> transformers suffix; the MLP layer indices are
# handled in _mlp_to_hf / _mlp_to_official
PROMPT_NAMES = NameTable([
    ("point_embeddings.{i}.", "point_embed.{i}."),
    ("mask_downscaling.0.", "mask_embed.conv1."),
    ("mask_downscaling.1.", "mask_embed.layer_norm1."),
    ("mask_downscaling.3.", "mask_embed.conv2."),
    ("mask_downscaling.4.", "mask_embed.layer_norm2."),
    ("mask_downscaling.6.", "mask_embed.conv3."),
])
DECODER_NAMES = NameTable([
    ("transformer.layers.{i}.norm{j}.", "transformer.layers.{i}.layer_norm{j}."),
    ("transformer.norm_final_attn.", "transformer.layer_norm_final_attn."),
    ("output_upscaling.0.", "upscale_conv1."),
    ("output_upscaling.1.", "upscale_layer_norm."),
    ("output_upscaling.3.", "upscale_conv2."),
])
_MLP = r"((?:output_hypernetworks_mlps\.\d+)|iou_prediction_head)"


def _mlp_depths(official: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """Number of Linear layers of every MLP in the mask decoder ('output_hypernetworks_mlps.0', ...)."""
    depths: Dict[str, int] = {}
    for k in official:
        m = re.match(r"^mask_decoder\." + _MLP + r"\.layers\.(\d+)\.", k)
        if m:
            depths[m.group(1)] = max(depths.get(m.group(1), 0), int(m.group(2)) + 1)
    return depths


def _mlp_to_hf(suffix: str, depths: Dict[str, int]) -> str:
    m = re.match("^" + _MLP + r"\.layers\.(\d+)\.(.*)$", suffix)
    if not m:
        return suffix
    mlp, i, rest = m.group(1), int(m.group(2)), m.group(3)
    name = "proj_in" if i == 0 else "proj_out" if i == depths[mlp] - 1 else f"layers.{i - 1}"
    return f"{mlp}.{name}.{rest}"


def _mlp_to_official(suffix: str, depths: Dict[str, int]) -> str:
    m = re.match("^" + _MLP + r"\.(proj_in|proj_out|layers\.(\d+))\.(.*)$", suffix)
    if not m:
        return suffix
    mlp, what, rest = m.group(1), m.group(2), m.group(4)
    i = 0 if what == "proj_in" else depths[mlp] - 1 if what == "proj_out" else int(m.group(3)) + 1
    return f"{mlp}.layers.{i}.{rest}"


def sam_model_state_dict(official: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An official full SAM state dict renamed to transformers' SamModel names."""
    depths = _mlp_depths(official)
    out: Dict[str, torch.Tensor] = {}
    for k, v in image_encoder_state_dict(official).items():
        out["vision_encoder." + k] = v
    for k, v in official.items():
        if k.startswith(PROMPT_PREFIX):
            suffix = k[len(PROMPT_PREFIX):]
            if suffix == _PE_OFFICIAL:
                for name in _PE_HF:
                    out[name] = v
            else:
                out[PROMPT_PREFIX + PROMPT_NAMES.to_transformers(suffix)] = v
        elif k.startswith(DECODER_PREFIX):
            suffix = DECODER_NAMES.to_transformers(k[len(DECODER_PREFIX):])
            out[DECODER_PREFIX + _mlp_to_hf(suffix, depths)] = v
        elif not k.startswith(ENCODER_PREFIX) and k not in _DROPPED:
            out[k] = v  # unknown: reported by the strict load
    return out


def official_sam_state_dict(model: SamModel) -> Dict[str, torch.Tensor]:
    """The inverse: a SamModel's weights under the official segment-anything names."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = official_image_encoder_state_dict(model.vision_encoder)
    hidden_layers: Dict[str, set] = {}  # transformers' MLP: proj_in, layers.0 .. layers.(n-3), proj_out
    for k in state:
        m = re.match(r"^mask_decoder\." + _MLP + r"\.(?:layers\.(\d+)\.)?", k)
        if m:
            hidden_layers.setdefault(m.group(1), set()).update({m.group(2)} if m.group(2) else set())
    depths = {mlp: 2 + len(ids) for mlp, ids in hidden_layers.items()}
    for k, v in state.items():
        if k == _PE_HF[0]:
            out[PROMPT_PREFIX + _PE_OFFICIAL] = v
        elif k == _PE_HF[1] or k.startswith("vision_encoder."):
            continue
        elif k.startswith(PROMPT_PREFIX):
            out[PROMPT_PREFIX + PROMPT_NAMES.to_official(k[len(PROMPT_PREFIX):])] = v
        elif k.startswith(DECODER_PREFIX):
            suffix = _mlp_to_official(k[len(DECODER_PREFIX):], depths)
            out[DECODER_PREFIX + DECODER_NAMES.to_official(suffix)] = v
        else:
            raise SAMCheckpointError(f"SamModel weight {k!r} has no official name")
    return out


def _missing_parts(official: Dict[str, torch.Tensor]) -> list:
    return [p for p in (ENCODER_PREFIX, PROMPT_PREFIX, DECODER_PREFIX) if not any(k.startswith(p) for k in official)]


def infer_sam_config(official: Dict[str, torch.Tensor], decoder_heads: int = SAM_DECODER_HEADS) -> SamConfig:
    """The SamConfig of an official full state dict, read off its tensor shapes (any size, published or not).
    decoder_heads: the mask decoder's attention heads (not in the shapes; 8 in every published SAM)."""
    missing = _missing_parts(official)
    if missing:
        raise SAMCheckpointError(f"the state dict holds no {' / '.join(p + '*' for p in missing)} weights: "
                                 f"{FULL_FILE_HINT}")
    vision = infer_vision_config(image_encoder_state_dict(official))
    p, d = PROMPT_PREFIX, DECODER_PREFIX
    try:
        pe = official[p + _PE_OFFICIAL]                              # (2, hidden / 2)
        prompt_hidden = official[p + "no_mask_embed.weight"].shape[1]
        mask_channels = official[p + "mask_downscaling.3.weight"].shape[0]
        n_points = 1 + max(int(m.group(1)) for k in official
                           if (m := re.match(r"^prompt_encoder\.point_embeddings\.(\d+)\.", k)))
        hidden = official[d + "iou_token.weight"].shape[1]
        n_mask_tokens = official[d + "mask_tokens.weight"].shape[0]
        depth = 1 + max(int(m.group(1)) for k in official
                        if (m := re.match(r"^mask_decoder\.transformer\.layers\.(\d+)\.", k)))
        mlp_dim = official[d + "transformer.layers.0.mlp.lin1.weight"].shape[0]
        internal = official[d + "transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]
        iou_depth = _mlp_depths(official)["iou_prediction_head"]
        iou_hidden = official[d + "iou_prediction_head.layers.0.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise SAMCheckpointError(f"the prompt encoder / mask decoder weights are incomplete ({e}); expected SAM's "
                                 f"layout. {FULL_FILE_HINT}") from e
    if internal % decoder_heads:
        raise SAMCheckpointError(f"the mask decoder's attention width {internal} is not divisible by "
                                 f"{decoder_heads} heads; give decoder_heads")
    # the Fourier position table belongs to the vision config in transformers (num_pos_feats)
    vision = SamVisionConfig(**{**vision.to_dict(), "num_pos_feats": pe.shape[1]})
    prompt = SamPromptEncoderConfig(hidden_size=prompt_hidden, image_size=vision.image_size,
                                    patch_size=vision.patch_size, mask_input_channels=mask_channels,
                                    num_point_embeddings=n_points)
    decoder = SamMaskDecoderConfig(hidden_size=hidden, mlp_dim=mlp_dim, num_hidden_layers=depth,
                                   num_attention_heads=decoder_heads, attention_downsample_rate=hidden // internal,
                                   num_multimask_outputs=n_mask_tokens - 1, iou_head_depth=iou_depth,
                                   iou_head_hidden_dim=iou_hidden, layer_norm_eps=1e-5)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder,
                     initializer_range=0.02)


def sam_config_from_dict(d: dict) -> SamConfig:
    """SamConfig.from_dict, named here so that plans records rebuild the model through one function."""
    return SamConfig.from_dict(d)


def load_sam_model(path: str, decoder_heads: int = SAM_DECODER_HEADS) -> Tuple[SamModel, SamConfig]:
    """The full SAM of an official SAM / MedSAM checkpoint file, strictly loaded, in eval mode."""
    official = read_sam_checkpoint(path)
    missing = _missing_parts(official)
    if missing:
        raise SAMCheckpointError(f"{path!r} holds no {' / '.join(p + '*' for p in missing)} weights: "
                                 f"{FULL_FILE_HINT}")
    try:
        config = infer_sam_config(official, decoder_heads)
    except SAMCheckpointError as e:
        raise SAMCheckpointError(f"{path!r}: {e}") from None
    model = SamModel(config)
    result = model.load_state_dict(sam_model_state_dict(official), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SAMCheckpointError(f"{path!r} does not match SAM's layout: missing {result.missing_keys[:5]}, "
                                 f"unexpected {result.unexpected_keys[:5]}. {FULL_FILE_HINT}")
    return model.eval(), config


def random_sam_model(config: SamConfig) -> SamModel:
    """A SamModel with random weights. initializer_range is forced to 0.02 in every sub-config: transformers'
    SAM default of 1e-10 would give all-zero weights (see sam_vision_config)."""
    config = SamConfig.from_dict(config.to_dict())
    config.initializer_range = 0.02
    config.vision_config.initializer_range = 0.02
    return SamModel(config)


def sam_config(variant: str, image_size: int = SAM_PRETRAINING_IMAGE_SIZE) -> SamConfig:
    """The SamConfig of a published SAM (vit_b / vit_l / vit_h encoder; the prompt encoder and mask decoder are
    the same in all three and in MedSAM), for random initialisation and benchmarks."""
    vision = sam_vision_config(variant, image_size)
    prompt = SamPromptEncoderConfig(image_size=image_size, patch_size=vision.patch_size)
    decoder = SamMaskDecoderConfig(layer_norm_eps=1e-5)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder,
                     initializer_range=0.02)


def tiny_sam_config(image_size: int = 64, decoder_heads: int = SAM_DECODER_HEADS) -> SamConfig:
    """A SAM small enough for CPU tests (about 1e5 parameters), with the published model's structure: windowed and
    global attention layers, a 2-block two-way decoder, 3 multimask outputs and a 3-layer IoU head."""
    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, global_attn_indexes=[2],
                             image_size=image_size, window_size=2, output_channels=32, mlp_dim=48,
                             num_pos_feats=16, initializer_range=0.02)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=image_size, patch_size=16, mask_input_channels=8)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=decoder_heads,
                                   iou_head_hidden_dim=24, layer_norm_eps=1e-5)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder,
                     initializer_range=0.02)


def save_sam_model_checkpoint(path: str, model: SamModel) -> None:
    """Write a SamModel as an official-format SAM checkpoint (atomic: a crash leaves no half-written file)."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(official_sam_state_dict(model), tmp)
    os.replace(tmp, path)

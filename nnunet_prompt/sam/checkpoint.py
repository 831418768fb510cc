"""Loading Segment Anything (SAM) image encoders from official checkpoint files, shared by SAMLoRATrainer
(issue 7) and SAMAdapter3DTrainer (issue 8).

The architecture comes from ``transformers`` (``SamVisionEncoder``), not from Meta's ``segment-anything``
package, because: transformers is already a dependency (text prompts), is maintained and released
regularly, gives SDPA attention and gradient checkpointing, and peft's LoRA targets its ``nn.Linear``
layers by name. segment-anything on PyPI is a 2023 snapshot whose only value here would be its state-dict
names, which are mapped below.

Official files (``sam_vit_b_01ec64.pth`` etc.) hold a plain state dict with the keys ``image_encoder.*``,
``prompt_encoder.*`` and ``mask_decoder.*``. The image encoder part is renamed to transformers' names
here (a fixed table: the same mapping transformers' own conversion script applies; it is not shipped in the
wheel). The variant (vit_b / vit_l / vit_h or any other size) is read from the tensor shapes, so the tiny
encoders the tests build load through exactly this code.

Input sizes other than the checkpoint's 1024 x 1024 interpolate the absolute position table (bicubic on
the patch grid) and the relative position tables of the global-attention layers (linear, as SAM itself
does at run time for mismatched sizes), so a 512 x 512 configuration starts from the pretrained tables.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from transformers import SamVisionConfig
from transformers.models.sam.modeling_sam import SamVisionEncoder

# hyper-parameters of the three published encoders (Kirillov et al. 2023, Table 13 / build_sam.py)
SAM_VIT_VARIANTS: Dict[str, dict] = {
    "vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]),
}
SAM_PRETRAINING_IMAGE_SIZE = 1024
ENCODER_PREFIX = "image_encoder."

class NameTable:
    """Renaming between official segment-anything weight names and transformers' SAM names, one table for both
    directions: (official prefix, transformers prefix) pairs, tried in order, where ``{i}`` / ``{j}`` stand for an
    index. Written out as a table: the mapping of transformers' own conversion script, which is not in the wheel."""

    def __init__(self, pairs):
        def compile_side(name):
            return re.compile("^" + re.escape(name).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)"))

        def template(name):
            return name.replace("{i}", r"\g<i>").replace("{j}", r"\g<j>")

        self._to_hf = [(compile_side(o), template(h)) for o, h in pairs]
        self._to_official = [(compile_side(h), template(o)) for o, h in pairs]

    @staticmethod
    def _rename(key: str, rules) -> str:
        for pattern, replacement in rules:
            new, n = pattern.subn(replacement, key, count=1)
            if n:
                return new
        return key

    def to_transformers(self, key: str) -> str:
        return self._rename(key, self._to_hf)

    def to_official(self, key: str) -> str:
        return self._rename(key, self._to_official)


# official image_encoder.* suffix <-> transformers SamVisionEncoder name
ENCODER_NAMES = NameTable([
    ("patch_embed.proj.", "patch_embed.projection."),
    ("blocks.{i}.norm1.", "layers.{i}.layer_norm1."),
    ("blocks.{i}.norm2.", "layers.{i}.layer_norm2."),
    ("blocks.{i}.", "layers.{i}."),
    ("neck.0.", "neck.conv1."),
    ("neck.1.", "neck.layer_norm1."),
    ("neck.2.", "neck.conv2."),
    ("neck.3.", "neck.layer_norm2."),
])


class SAMCheckpointError(ValueError):
    pass


def sam_vision_config(variant: str, image_size: int = SAM_PRETRAINING_IMAGE_SIZE, **overrides) -> SamVisionConfig:
    """transformers config of a published encoder (vit_b / vit_l / vit_h) for an input of image_size^2 pixels.
    initializer_range is 0.02 (transformers' SAM default of 1e-10 would make a randomly initialised encoder
    an all-zero one, useless for the random-initialisation experiments)."""
    if variant not in SAM_VIT_VARIANTS:
        raise SAMCheckpointError(f"unknown SAM encoder {variant!r}; choose one of {sorted(SAM_VIT_VARIANTS)}")
    if image_size % 16:
        raise SAMCheckpointError(f"SAM's input size must be a multiple of its 16-pixel patch, got {image_size}")
    kwargs = dict(SAM_VIT_VARIANTS[variant], image_size=image_size, initializer_range=0.02)
    kwargs.update(overrides)
    return SamVisionConfig(**kwargs)


def read_sam_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of an official SAM checkpoint file (tensors only, no pickled code is executed)."""
    if not path:
        raise SAMCheckpointError("no SAM checkpoint given")
    if not os.path.isfile(path):
        raise SAMCheckpointError(f"SAM checkpoint {path!r} does not exist. Download an official file (e.g. "
                                 f"sam_vit_b_01ec64.pth) on a machine with internet access and give its local path.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise SAMCheckpointError(f"{path!r} is not a readable PyTorch checkpoint ({e})") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # some fine-tuned releases (MedSAM) nest the state dict
    if not isinstance(state, dict) or not any(k.startswith(ENCODER_PREFIX) for k in state):
        raise SAMCheckpointError(f"{path!r} holds no 'image_encoder.*' weights: not a Segment Anything checkpoint")
    return state


def image_encoder_state_dict(official: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The 'image_encoder.*' part of an official state dict, renamed to transformers' SamVisionEncoder."""
    return {ENCODER_NAMES.to_transformers(k[len(ENCODER_PREFIX):]): v
            for k, v in official.items() if k.startswith(ENCODER_PREFIX)}


def official_image_encoder_state_dict(encoder: SamVisionEncoder) -> Dict[str, torch.Tensor]:
    """The inverse: a transformers encoder's weights under the official 'image_encoder.*' names."""
    return {ENCODER_PREFIX + ENCODER_NAMES.to_official(k): v.detach().clone()
            for k, v in encoder.state_dict().items()}


def infer_vision_config(encoder_state: Dict[str, torch.Tensor], image_size: Optional[int] = None) -> SamVisionConfig:
    """Read the encoder's hyper-parameters off its tensor shapes (any size, published or not)."""
    try:
        patch_weight = encoder_state["patch_embed.projection.weight"]  # (hidden, channels, p, p)
        pos = encoder_state["pos_embed"]  # (1, grid, grid, hidden)
        depth = 1 + max(int(m.group(1)) for k in encoder_state if (m := re.match(r"layers\.(\d+)\.", k)))
        rel_lengths = [encoder_state[f"layers.{i}.attn.rel_pos_h"].shape[0] for i in range(depth)]
        head_dim = encoder_state["layers.0.attn.rel_pos_h"].shape[1]
        mlp_dim = encoder_state["layers.0.mlp.lin1.weight"].shape[0]
        out_channels = encoder_state["neck.conv1.weight"].shape[0]
        qkv_bias = "layers.0.attn.qkv.bias" in encoder_state
    except (KeyError, ValueError) as e:
        raise SAMCheckpointError(f"the image encoder weights are incomplete ({e}); expected SAM's ViT layout") from e
    hidden, channels, patch = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[2]
    window = (min(rel_lengths) + 1) // 2
    # global layers attend over the whole grid, so their relative tables are longer than the windowed ones'
    global_indexes = [i for i, n in enumerate(rel_lengths) if n != 2 * window - 1]
    pretrained_size = pos.shape[1] * patch
    return SamVisionConfig(
        hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=hidden // head_dim, num_channels=channels,
        patch_size=patch, mlp_dim=mlp_dim, output_channels=out_channels, window_size=window,
        global_attn_indexes=global_indexes, qkv_bias=qkv_bias, image_size=image_size or pretrained_size,
        mlp_ratio=mlp_dim / hidden, initializer_range=0.02)


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    if table.shape[0] == length:
        return table
    return F.interpolate(table.T[None].float(), size=length, mode="linear").squeeze(0).T.to(table.dtype)


def resize_position_tables(encoder_state: Dict[str, torch.Tensor], config: SamVisionConfig) -> Dict[str, torch.Tensor]:
    """Adapt the absolute and the global-attention relative position tables to config.image_size."""
    state = dict(encoder_state)
    grid = config.image_size // config.patch_size
    pos = state["pos_embed"]
    if pos.shape[1] != grid:
        state["pos_embed"] = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic",
                                           align_corners=False).permute(0, 2, 3, 1).to(pos.dtype)
    for i in config.global_attn_indexes:
        for axis in ("h", "w"):
            key = f"layers.{i}.attn.rel_pos_{axis}"
            state[key] = _resize_rel_pos(state[key], 2 * grid - 1)
    return state


def load_sam_image_encoder(path: str, image_size: Optional[int] = None,
                           expected_variant: Optional[str] = None) -> Tuple[SamVisionEncoder, SamVisionConfig]:
    """SAM's image encoder with the weights of an official checkpoint file, for inputs of image_size^2 pixels
    (default: the checkpoint's own size). expected_variant ('vit_b', ...) checks the file is that encoder."""
    state = image_encoder_state_dict(read_sam_checkpoint(path))
    config = infer_vision_config(state, image_size)
    if config.image_size % config.patch_size:
        raise SAMCheckpointError(f"input size {config.image_size} is not a multiple of the {config.patch_size}-pixel "
                                 f"patch of {path!r}")
    if expected_variant is not None:
        spec = SAM_VIT_VARIANTS.get(expected_variant)
        if spec is None or (spec["hidden_size"], spec["num_hidden_layers"]) != (config.hidden_size,
                                                                                 config.num_hidden_layers):
            raise SAMCheckpointError(
                f"{path!r} holds an encoder of width {config.hidden_size} and depth {config.num_hidden_layers}, "
                f"not {expected_variant}; give the matching checkpoint or change the variant")
    encoder = SamVisionEncoder(config)
    encoder.load_state_dict(resize_position_tables(state, config), strict=True)
    return encoder, config


def random_sam_image_encoder(config: SamVisionConfig) -> SamVisionEncoder:
    """An encoder with random weights (experiments without a checkpoint; position tables start at zero as in
    SAM's own initialisation)."""
    return SamVisionEncoder(config)


def save_sam_checkpoint(path: str, encoder: SamVisionEncoder, extra: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Write an encoder as an official-format SAM checkpoint (tests build tiny encoders and load them back
    through load_sam_image_encoder). extra: further entries such as 'mask_decoder.*'. Atomic write."""
    state = official_image_encoder_state_dict(encoder)
    state.update(extra or {})
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Which SAM file a trainer starts from. nnUNetv2_train has no argument for it, so (as for the text model,
# NNUNET_PROMPT_TEXT_MODEL) an environment variable names it at training time; the trained model stores a
# SAMBaseReference so that its checkpoints need only the trainable weights, and inference finds the base file
# again (a moved file: set the variable to its new place; a different encoder is refused).
ENV_VAR = "NNUNET_PROMPT_SAM_CHECKPOINT"


@dataclass(frozen=True)
class SAMBaseReference:
    path: str            # absolute path of the official checkpoint file
    hidden_size: int
    num_hidden_layers: int
    patch_size: int
    num_bytes: int       # file size: a cheap fingerprint that tells sam_vit_b_01ec64.pth from MedSAM's ViT-B

    @classmethod
    def from_file(cls, path: str) -> "SAMBaseReference":
        config = infer_vision_config(image_encoder_state_dict(read_sam_checkpoint(path)))
        return cls(os.path.abspath(path), config.hidden_size, config.num_hidden_layers, config.patch_size,
                   os.path.getsize(path))

    @classmethod
    def from_environment(cls, random_init_hint: str = "") -> "SAMBaseReference":
        path = os.environ.get(ENV_VAR)
        if not path:
            raise SAMCheckpointError(
                f"No SAM checkpoint: set {ENV_VAR} to the local path of an official Segment Anything checkpoint "
                f"(e.g. sam_vit_b_01ec64.pth); nothing is downloaded.{' ' + random_init_hint if random_init_hint else ''}")
        return cls.from_file(path)

    def as_dict(self) -> dict:
        return asdict(self)

    def relocated(self) -> "SAMBaseReference":
        """This reference, or the file NNUNET_PROMPT_SAM_CHECKPOINT names now when the user moved it;
        a file holding a different encoder is refused."""
        override = os.environ.get(ENV_VAR)
        if not override or os.path.abspath(override) == self.path:
            if not os.path.isfile(self.path):
                raise SAMCheckpointError(f"This model was trained from the SAM checkpoint {self.path!r}, which does "
                                         f"not exist any more. If it moved, set {ENV_VAR} to its new path.")
            return self
        other = SAMBaseReference.from_file(override)
        if (other.hidden_size, other.num_hidden_layers, other.patch_size, other.num_bytes) != (
                self.hidden_size, self.num_hidden_layers, self.patch_size, self.num_bytes):
            raise SAMCheckpointError(f"{ENV_VAR}={override!r} is not the SAM checkpoint this model was trained from "
                                     f"({self.path!r}: width {self.hidden_size}, depth {self.num_hidden_layers}, "
                                     f"{self.num_bytes} bytes).")
        return other

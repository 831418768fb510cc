"""Which MedSAM network a model is: the ``sam`` field of its plans record (MedSAMTrainer, zero-shot MedSAM).

    {"kind": "medsam", "base": SAMBaseReference dict or None, "pixel_norm": "unit" | "imagenet",
     "sam_config": transformers SamConfig dict (vision image_size: SAM's input size, the patch is resized to it),
     "random_config": name of the random SAM ("tiny", "vit_b", ...; base None) or None, "version": 1}

A fresh training names the base file with ``NNUNET_PROMPT_SAM_CHECKPOINT`` (an official SAM or MedSAM ``.pth``);
``*_randomInit`` trainers take none and build a random SAM of the config ``NNUNET_PROMPT_SAM_RANDOM_CONFIG`` names.
The pixel normalisation is the trainer's (MedSAM: ``unit``) unless ``NNUNET_PROMPT_SAM_PIXEL_NORM`` says otherwise
(official SAM files: ``imagenet``). The SamConfig is stored so that the network is rebuilt without the file: the
checkpoints of MedSAM models hold every weight.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, Optional, Sequence

from nnunet_prompt.sam.checkpoint import ENV_VAR, SAMBaseReference, SAMCheckpointError
from nnunet_prompt.sam.intensity import PIXEL_NORMS
from nnunet_prompt.sam.model_info import PIXEL_NORM_ENV_VAR

KIND = "medsam"
VERSION = 1
RANDOM_CONFIG_ENV_VAR = "NNUNET_PROMPT_SAM_RANDOM_CONFIG"


def check_pixel_norm(pixel_norm: str, where: str) -> str:
    if pixel_norm not in PIXEL_NORMS:
        raise SAMCheckpointError(f"pixel normalisation {pixel_norm!r} ({where}) unknown: choose one of {PIXEL_NORMS} "
                                 f"('unit' for MedSAM files, 'imagenet' for official SAM files)")
    return pixel_norm


def sam_config_for(path: Optional[str], image_size: int, random_config: Optional[str] = None):
    """The SamConfig of a SAM/MedSAM file (read off its tensor shapes: its input size stays the file's, 1024 for
    official files, and the network resizes the planned patch to it, as MedSAM does) or of a named random config
    ("tiny": input size = the planned patch image_size, for tests; "vit_b" / "vit_l" / "vit_h": SAM's 1024)."""
    from nnunet_prompt.sam import full_model
    from nnunet_prompt.sam.checkpoint import read_sam_checkpoint
    if path:
        return full_model.infer_sam_config(read_sam_checkpoint(path))
    if random_config == "tiny":
        return full_model.tiny_sam_config(int(image_size))
    try:
        return full_model.sam_config(random_config or "vit_b")
    except SAMCheckpointError as e:
        raise SAMCheckpointError(f"random SAM config {random_config!r} ({RANDOM_CONFIG_ENV_VAR}) unknown: choose "
                                 f"tiny, vit_b, vit_l or vit_h") from e


def record(base: Optional[SAMBaseReference], pixel_norm: str, image_size: int,
           random_config: Optional[str] = None) -> dict:
    config = sam_config_for(base.path if base else None, image_size, random_config)
    return {"kind": KIND, "base": None if base is None else base.as_dict(), "pixel_norm": pixel_norm,
            "sam_config": json.loads(json.dumps(config.to_dict())),  # as plans.json holds it (str keys)
            "random_config": None if base else random_config, "version": VERSION}


def from_environment(random_init: bool, default_pixel_norm: str, image_size: int) -> dict:
    pixel_norm = check_pixel_norm(os.environ.get(PIXEL_NORM_ENV_VAR, default_pixel_norm), PIXEL_NORM_ENV_VAR)
    if random_init:
        return record(None, pixel_norm, image_size, os.environ.get(RANDOM_CONFIG_ENV_VAR, "vit_b"))
    base = SAMBaseReference.from_environment("For experiments without pretrained weights train a *_randomInit variant "
                                             "(e.g. -tr MedSAMTrainer_randomInit).")
    return record(base, pixel_norm, image_size)


def reachable_base_path(sam: dict) -> Optional[str]:
    """The base file when it is there (moved: NNUNET_PROMPT_SAM_CHECKPOINT), else None: the checkpoint that is
    loaded next holds every weight."""
    if sam.get("base") is None:
        return None
    try:
        return SAMBaseReference(**sam["base"]).relocated().path
    except SAMCheckpointError as e:
        print(f"nnunet-prompt: note: {e}; building the MedSAM network from its recorded config: its weights come "
              f"from the model's checkpoint.", file=sys.stderr)
        return None


def build_network(sam: dict, finetune: str, normalization_schemes: Sequence[str],
                  intensity_properties: Dict[str, dict]):
    if sam is None or sam.get("kind") != KIND:
        raise SAMCheckpointError(f"the plans record's 'sam' entry is not a MedSAM one ({sam}); train with a "
                                 f"MedSAMTrainer variant")
    from nnunet_prompt.sam.full_model import sam_config_from_dict
    from nnunet_prompt.sam.medsam_network import build_medsam_network
    config = sam_config_from_dict(sam["sam_config"])  # its input size: the patch is resized to it
    return build_medsam_network(config, reachable_base_path(sam), check_pixel_norm(sam["pixel_norm"], "record"),
                                normalization_schemes, intensity_properties, finetune)


__all__ = ["ENV_VAR", "KIND", "RANDOM_CONFIG_ENV_VAR", "build_network", "from_environment", "record"]

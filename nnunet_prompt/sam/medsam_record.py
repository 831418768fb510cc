"""Which MedSAM network a model is: the ``sam`` field of its plans record (MedSAMTrainer, zero-shot MedSAM).

    {"kind": "medsam", "base": SAMBaseReference dict or None, "pixel_norm": "unit" | "imagenet",
     "sam_config": transformers SamConfig dict (vision image_size = the planned patch),
     "random_config": name of the random SAM ("tiny", "vit_b", ...; base None) or None, "version": 1}

A fresh training names the base file with ``NNUNET_PROMPT_SAM_CHECKPOINT`` (an official SAM or MedSAM ``.pth``);
``*_randomInit`` trainers take none and build a random SAM of the config ``NNUNET_PROMPT_SAM_RANDOM_CONFIG`` names.
The pixel normalisation is the trainer's (MedSAM: ``unit``) unless ``NNUNET_PROMPT_SAM_PIXEL_NORM`` says otherwise
(official SAM files: ``imagenet``). The SamConfig is stored so that the network is rebuilt without the file: the
checkpoints of MedSAM models hold every weight.
"""
from __future__ import annotations

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
    """The SamConfig of a SAM/MedSAM file (read off its tensor shapes) or of a named random config, for inputs of
    image_size^2 pixels."""
    # nnunet_prompt.sam.full_model: the medsam-model branch's full-SAM loading (names as of its work in progress)
    from nnunet_prompt.sam import full_model
    from nnunet_prompt.sam.checkpoint import read_sam_checkpoint, sam_vision_config
    if path:
        config = full_model.infer_sam_config(read_sam_checkpoint(path))
    elif random_config == "tiny":
        config = full_model.tiny_sam_config(int(image_size))
    else:
        from transformers import SamConfig
        config = SamConfig(vision_config=sam_vision_config(random_config or "vit_b", int(image_size)).to_dict())
    config.vision_config.image_size = int(image_size)
    return config


def record(base: Optional[SAMBaseReference], pixel_norm: str, image_size: int,
           random_config: Optional[str] = None) -> dict:
    config = sam_config_for(base.path if base else None, image_size, random_config)
    return {"kind": KIND, "base": None if base is None else base.as_dict(), "pixel_norm": pixel_norm,
            "sam_config": config.to_dict(), "random_config": None if base else random_config, "version": VERSION}


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


def build_network(sam: dict, finetune: str, image_size: int, normalization_schemes: Sequence[str],
                  intensity_properties: Dict[str, dict]):
    if sam is None or sam.get("kind") != KIND:
        raise SAMCheckpointError(f"the plans record's 'sam' entry is not a MedSAM one ({sam}); train with a "
                                 f"MedSAMTrainer variant")
    from nnunet_prompt.sam.full_model import sam_config_from_dict
    from nnunet_prompt.sam.medsam_network import build_medsam_network
    config = sam_config_from_dict(sam["sam_config"])
    if config.vision_config.image_size != image_size:
        raise SAMCheckpointError(f"the recorded SAM input size {config.vision_config.image_size} is not the planned "
                                 f"patch {image_size}: the model was trained on other plans")
    return build_medsam_network(config, reachable_base_path(sam), check_pixel_norm(sam["pixel_norm"], "record"),
                                normalization_schemes, intensity_properties, finetune)


__all__ = ["ENV_VAR", "KIND", "RANDOM_CONFIG_ENV_VAR", "build_network", "from_environment", "record"]

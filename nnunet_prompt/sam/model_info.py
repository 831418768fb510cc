"""Which SAM base a SAM trainer's model was built from, stored beside plans.json as ``sam_model.json``.

Checkpoints hold only the weights that training changes (see ``SAMSegmentationNet.state_dict``); the frozen
encoder weights come from the base file again whenever the network is built. nnU-Net builds networks through
the trainer's static ``build_network_architecture``, which knows nothing of the model folder, so (as for the
text model, ``nnunet_prompt.text.config.using``) whoever rebuilds a stored model makes its info the active
one with ``using(info)``: the trainer (fresh start: ``NNUNET_PROMPT_SAM_CHECKPOINT``; ``--c``: the stored
file), ``PromptPredictor`` and the interactive session. Without an active info, the environment variable is
read (plain ``nnUNetv2_predict`` of an unprompted model).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import List, Optional

from nnunet_prompt.sam.checkpoint import ENV_VAR, SAMBaseReference, SAMCheckpointError

MODEL_INFO_FILENAME = "sam_model.json"
PIXEL_NORM_ENV_VAR = "NNUNET_PROMPT_SAM_PIXEL_NORM"
RANDOM_VARIANT_ENV_VAR = "NNUNET_PROMPT_SAM_RANDOM_VARIANT"


@dataclass(frozen=True)
class SAMModelInfo:
    base: Optional[SAMBaseReference]   # None: random initialisation (experiments), frozen weights stored
    pixel_norm: str = "imagenet"       # see nnunet_prompt.sam.intensity
    random_variant: str = "vit_b"      # encoder size when base is None
    version: int = 1

    @classmethod
    def from_environment(cls, random_init: bool) -> "SAMModelInfo":
        pixel_norm = os.environ.get(PIXEL_NORM_ENV_VAR, "imagenet")
        if random_init:
            return cls(None, pixel_norm, os.environ.get(RANDOM_VARIANT_ENV_VAR, "vit_b"))
        hint = ("For experiments without pretrained weights train a *_randomInit variant "
                "(e.g. -tr SAMLoRATrainer_randomInit).")
        return cls(SAMBaseReference.from_environment(hint), pixel_norm)

    def to_dict(self) -> dict:
        return {"base": None if self.base is None else self.base.as_dict(), "pixel_norm": self.pixel_norm,
                "random_variant": self.random_variant, "version": self.version}

    @classmethod
    def from_dict(cls, d: dict) -> "SAMModelInfo":
        base = None if d.get("base") is None else SAMBaseReference(**d["base"])
        return cls(base, d.get("pixel_norm", "imagenet"), d.get("random_variant", "vit_b"), int(d.get("version", 1)))

    def save(self, folder: str) -> None:
        from nnunet_prompt.io_utils import atomic_write_json
        atomic_write_json(self.to_dict(), os.path.join(folder, MODEL_INFO_FILENAME))

    @classmethod
    def load(cls, folder: str) -> Optional["SAMModelInfo"]:
        path = os.path.join(folder, MODEL_INFO_FILENAME)
        if not os.path.isfile(path):
            return None
        with open(path, "r", encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def relocated(self) -> "SAMModelInfo":
        """The base file found again (``NNUNET_PROMPT_SAM_CHECKPOINT`` names it when it moved)."""
        if self.base is None:
            return self
        try:
            return replace(self, base=self.base.relocated())
        except SAMCheckpointError as e:
            raise SAMCheckpointError(f"{e} (this model's SAM base, recorded in {MODEL_INFO_FILENAME}: {self.base.path}; "
                                     f"{ENV_VAR} names its new place if it moved)") from None


_active: List[SAMModelInfo] = []


@contextmanager
def using(info: Optional[SAMModelInfo]):
    if info is None:
        yield None
        return
    _active.append(info)
    try:
        yield info
    finally:
        _active.pop()


def active_info(random_init: bool) -> SAMModelInfo:
    if _active:
        return _active[-1]
    try:
        return SAMModelInfo.from_environment(random_init)
    except SAMCheckpointError as e:
        raise SAMCheckpointError(f"{e} (when predicting with a trained model, {ENV_VAR} names the base file it was "
                                 f"trained from, recorded in its {MODEL_INFO_FILENAME})") from None

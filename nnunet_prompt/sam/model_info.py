"""Which SAM base a SAM LoRA model was built from: the ``sam`` field of its plans record.

Checkpoints hold only the weights that training changes (see ``SAMSegmentationNet.state_dict``); the frozen
encoder weights come from the base file again whenever the network is built from the plans. A fresh training
names the file with ``NNUNET_PROMPT_SAM_CHECKPOINT``; a trained model finds it through its record (and the
variable again only if the file moved, checked to be the same encoder).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Optional

from nnunet_prompt.sam.checkpoint import ENV_VAR, SAMBaseReference, SAMCheckpointError

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

    def relocated(self) -> "SAMModelInfo":
        """The base file found again (``NNUNET_PROMPT_SAM_CHECKPOINT`` names it when it moved)."""
        if self.base is None:
            return self
        try:
            return replace(self, base=self.base.relocated())
        except SAMCheckpointError as e:
            raise SAMCheckpointError(f"{e} (this model's SAM base, recorded in its plans.json: {self.base.path}; "
                                     f"{ENV_VAR} names its new place if it moved)") from None

"""How a text-conditioned model reads clinical context: the ``clinical_context`` of its plans record.

The record (``nnunet_prompt.model_record``) holds the context encoder: the language model with text prompt
tuning (``kind = "language_model"``, with the ``TextModelSpec``) or the numeric-category ablation
(``kind = "categories"``), and the prompt-group sizes. The trainer's ``build_network_architecture`` rebuilds
exactly that encoder from the plans; its presence marks a model that needs text.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

from torch import nn

from nnunet_prompt.text.language_model import TextModelSpec

KINDS = ("language_model", "categories")
# where image tokens are located for the fusion: in the whole image (position channels) or, as models recorded
# before those existed, in the patch (nnunet_prompt.text.image_position says why the whole image)
POSITIONS = ("image", "patch")


@dataclass(frozen=True)
class ClinicalContextConfig:
    kind: str = "language_model"
    num_groups: int = 4           # N text prompt groups (LLMSeg: several beat one, Table 3b)
    vectors_per_group: int = 8    # M learnable vectors per group
    category_dim: int = 128       # context size of the numeric-category ablation
    text_model: Optional[TextModelSpec] = None
    position: str = "image"
    text_readout: int = 0         # context embeddings read from the text's own tokens (prompt_tuning; opt-in)
    # text-steered position maps the network reads as input and adds to its logits, and whether their slopes read
    # the text against its side-swapped copy (nnunet_prompt.text.position_map; records without them: 0, False)
    position_maps: int = 8
    laterality_contrast: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.laterality_contrast and not self.position_maps:
            raise ValueError("laterality_contrast is read by the position maps: set position_maps > 0, or "
                             "laterality_contrast=False")

    @property
    def position_channels(self) -> int:
        """Position channels the network reads after the image channels."""
        from nnunet_prompt.text.image_position import NUM_POSITION_CHANNELS
        return NUM_POSITION_CHANNELS if self.position == "image" else 0

    @property
    def network_input_channels(self) -> int:
        """Channels the U-Net's first convolution takes beyond the case's own: the position channels (the dataset
        and the predictor add them) and the position maps (the network adds them)."""
        return self.position_channels + self.position_maps

    @property
    def entry_key(self) -> str:
        """Which part of a clinical-text sidecar entry the encoder reads."""
        return "text" if self.kind == "language_model" else "fields"

    def with_text_model_from_environment(self) -> "ClinicalContextConfig":
        if self.kind != "language_model" or self.text_model is not None:
            return self
        return replace(self, text_model=TextModelSpec.from_environment())

    def build_encoder(self) -> nn.Module:
        if self.kind == "categories":
            from nnunet_prompt.text.category_encoding import CategoryEncoding
            return CategoryEncoding(self.category_dim)
        from nnunet_prompt.text.prompt_tuning import TextPromptTuning
        return TextPromptTuning(self.text_model, self.num_groups, self.vectors_per_group, self.text_readout)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClinicalContextConfig":
        d = dict(d)
        d.setdefault("position", "patch")  # recorded before position channels existed
        d.setdefault("text_readout", 0)  # recorded before the token read-out existed
        d.setdefault("position_maps", 0)  # recorded before the position maps existed
        d.setdefault("laterality_contrast", False)  # recorded before the laterality contrast existed
        spec = d.pop("text_model", None)
        return cls(**d, text_model=TextModelSpec(**spec) if spec else None)

    def relocated(self) -> "ClinicalContextConfig":
        return self if self.text_model is None else replace(self, text_model=self.text_model.relocated())

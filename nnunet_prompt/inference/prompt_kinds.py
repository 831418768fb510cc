"""Which prompt kinds a model reads, and one refusal for the kinds it would ignore.

A prompt may hold points, boxes, a mask and text (``nnunet_prompt.prompts.model``). A model reads some of them:

* a spatial prompt model the prompt channels its network takes: all of them (PromptTrainer, PSAPTrainer, the SAM
  trainers), or a subset its plans record names (BoxPromptTrainer: the box only, ``used_prompt_channels``);
* a text-conditioned model (TextPromptTrainer) its clinical entry and nothing spatial: the free text, or for the
  categories ablation the structured fields of a clinical-text sidecar, so not even a prompt's text;
* a model of both (TextAndPromptTrainer) the text and its prompt channels.

Anything else in a prompt would be dropped without a word and the user would believe it was used, so prediction
and the interactive session refuse it, naming the kinds the model takes and the models that take the others.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

from nnunet_prompt.prompts.model import PromptError

# prompt key -> the prompt-encoding channel it is drawn into
SPATIAL_KINDS = {"positive_points": "positive_clicks", "negative_points": "negative_clicks", "boxes": "box",
                 "mask": "previous_mask"}
TEXT = "text"

# who to predict with instead: the trainers that read the kind
TAKEN_BY = {"positive_points": "PromptTrainer, PSAPTrainer or TextAndPromptTrainer",
            "negative_points": "PromptTrainer, PSAPTrainer or TextAndPromptTrainer",
            "boxes": "PromptTrainer, BoxPromptTrainer, MedSAMTrainer or TextAndPromptTrainer",
            "mask": "PromptTrainer, PSAPTrainer or TextAndPromptTrainer",
            TEXT: "TextPromptTrainer or TextAndPromptTrainer"}


def kinds_read(prompt_channels_used: Optional[Sequence[str]], clinical_entry_key: Optional[str]) -> frozenset:
    """The prompt keys a model reads. ``clinical_entry_key``: the clinical entry key of a text-conditioned model
    (``ClinicalContextConfig.entry_key``: "text" or "fields"), None for a spatial model; ``prompt_channels_used``:
    the channel names a spatial model's network reads (None for a text-only model)."""
    text = frozenset({TEXT}) if clinical_entry_key == TEXT else frozenset()
    if clinical_entry_key is not None and prompt_channels_used is None:
        return text
    used = set(prompt_channels_used or ())
    # a model with both (TextAndPromptTrainer) reads the text and its prompt channels
    return text | frozenset(k for k, channel in SPATIAL_KINDS.items() if channel in used)


def kinds_given(prompt) -> list:
    """The prompt keys a ``Prompt`` holds, in the prompt model's order."""
    present = {"positive_points": bool(prompt.positive_points), "negative_points": bool(prompt.negative_points),
               "boxes": bool(prompt.boxes), "mask": prompt.mask is not None, TEXT: prompt.text is not None}
    return [k for k, there in present.items() if there]


def describe_read(read: Iterable[str], clinical_entry_key: Optional[str]) -> str:
    read = [k for k in (*SPATIAL_KINDS, TEXT) if k in set(read)]
    if clinical_entry_key == "fields":
        return "the structured 'fields' of a clinical-text sidecar (--clinical-text) only"
    if read == [TEXT]:
        return "clinical text only"
    return ", ".join(read) + " only"


def refuse_unread(given: Sequence[str], read: frozenset, clinical_entry_key: Optional[str], trainer: str,
                  what: str, instead: str = "Remove {kinds} from the case's prompts") -> None:
    """A ``PromptError`` if ``given`` holds a kind the model does not read. ``what`` names the input ("Case 'x' in
    prompts file 'p.json'"); ``instead`` is the fix on the user's side, ``{kinds}`` in it stands for the kinds
    refused."""
    ignored = [k for k in given if k not in read]
    if not ignored:
        return
    names = ", ".join(ignored)
    others = "; ".join(sorted({TAKEN_BY[k] for k in ignored}))
    raise PromptError(f"{what} gives {names}, which this model ({trainer}) does not read: it takes "
                      f"{describe_read(read, clinical_entry_key)}. {instead.format(kinds=names)}"
                      f", or use a model trained with {' / '.join(ignored)} ({others}).")

"""Perturbations of a case's clinical entry, for LLMSeg's text perturbation analysis (``nnunet-prompt text-analysis``).

An entry is the clinical-text sidecar's ``{"text": ..., "fields": {...}}`` (``nnunet_prompt.clinical_text``). A
perturbation returns a changed copy; the entry itself is never modified.

* ``laterality``: left <-> right, as whole words ("Left-sided" -> "Right-sided", not "bright"), keeping the case
  of each word as written (left / Left / LEFT), in the text and in every string field value.
* ``n-stage``: N0 <-> N1+: an N0 entry becomes N1, any positive N stage (N1, N2, N3 with a sub-category a-c) becomes
  N0; NX stays. An N stage is an ``N`` followed by its digit, standing alone ("N1") or after the T stage or a c/p/yp
  prefix ("cT2N1M0", "pN2b"), not inside a word ("Node" and "TNM" are left alone). In the text and every string
  field value (the synthetic data's "N" field).
* ``drop-field:NAME``: remove field NAME from the entry's structured ``fields`` (what the categories ablation
  reads); the free text is left as it is.
* a JSON file ``{"old": "new", ...}``: the user's replacements, whole words as written (case-sensitive), all at once
  (so ``{"left": "right", "right": "left"}`` swaps), in the text and every string field value.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, Mapping

from nnunet_prompt.prompts.model import PromptError

BUILT_IN = ("laterality", "n-stage", "drop-field:NAME", "FILE.json")

_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)
# an N stage with what may stand before it in one token: a c/p/yp prefix and the T stage ("cT2N1M0", "pN2b"); the
# token starts after a non-letter, so "HN0" or "Node" are no N stages; the M stage may follow without a space
_N_STAGE = re.compile(r"(?<![A-Za-z])((?:[cpy]{1,2})?(?:T(?:[0-4][a-d]?|is|[xX]))?)N([0-3X])([a-c]?)(?![0-9a-z])")


def _same_case(word: str, like: str) -> str:
    if like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word.capitalize()
    return word.lower()


def swap_laterality(text: str) -> str:
    return _SIDE.sub(lambda m: _same_case("right" if m.group(1).lower() == "left" else "left", m.group(1)), text)


def swap_laterality_in(value):
    """A clinical entry's text, or its fields (their string values), with left and right swapped; a copy."""
    if isinstance(value, str):
        return swap_laterality(value)
    if isinstance(value, Mapping):
        return {k: swap_laterality(v) if isinstance(v, str) else v for k, v in value.items()}
    return value


def swap_n_stage(text: str) -> str:
    def flip(m):
        prefix, digit = m.group(1), m.group(2)
        if digit == "X":
            return m.group(0)
        return prefix + ("N1" if digit == "0" else "N0")  # N0 -> N1; N1, N2a, N3 ... -> N0
    return _N_STAGE.sub(flip, text)


def replace_words(mapping: Dict[str, str]) -> Callable[[str], str]:
    """All of ``mapping``'s keys at once, whole words (word boundaries where a key begins or ends with a word
    character), longest first so that "left neck" wins over "left"."""
    keys = sorted(mapping, key=len, reverse=True)
    parts = [(r"\b" if k[0].isalnum() or k[0] == "_" else "") + re.escape(k) + (r"\b" if k[-1].isalnum() or k[-1] == "_"
                                                                                 else "") for k in keys]
    pattern = re.compile("|".join(parts))
    return lambda text: pattern.sub(lambda m: mapping[m.group(0)], text)


@dataclass
class Perturbation:
    spec: str  # as the user gave it (the report names it so)
    description: str
    words: Callable[[str], str] = None  # applied to the text and every string field value
    drop_field: str = None

    def apply(self, entry: dict) -> dict:
        out = copy.deepcopy(entry)
        if self.words is not None:
            if isinstance(out.get("text"), str):
                out["text"] = self.words(out["text"])
            fields = out.get("fields")
            if isinstance(fields, dict):
                out["fields"] = {k: self.words(v) if isinstance(v, str) else v for k, v in fields.items()}
        if self.drop_field is not None and isinstance(out.get("fields"), dict):
            out["fields"].pop(self.drop_field, None)
        return out


def parse_perturbation(spec: str) -> Perturbation:
    """``laterality``, ``n-stage``, ``drop-field:NAME`` or a JSON file of replacements; a clear error otherwise."""
    if spec == "laterality":
        return Perturbation(spec, "left <-> right (whole words, case kept)", words=swap_laterality)
    if spec == "n-stage":
        return Perturbation(spec, "N0 <-> N1+ (N0 -> N1; N1, N2, N3 -> N0; NX kept)", words=swap_n_stage)
    if spec.startswith("drop-field:"):
        name = spec[len("drop-field:"):]
        if not name:
            raise PromptError("--perturb drop-field:NAME needs the field's name, e.g. drop-field:N.")
        return Perturbation(spec, f"field '{name}' removed from the structured fields", drop_field=name)
    if spec.endswith(".json"):
        from nnunet_prompt.io_utils import read_json
        mapping = read_json(spec, "Replacements file (--perturb)")
        if (not isinstance(mapping, dict) or not mapping
                or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in mapping.items())):
            raise PromptError(f"Replacements file '{spec}' (--perturb) must hold a JSON object of words to replace, "
                              f"e.g. {{\"left\": \"right\", \"right\": \"left\"}}: non-empty strings to strings.")
        return Perturbation(os.path.abspath(spec), f"replacements of {spec}: {mapping}", words=replace_words(mapping))
    raise PromptError(f"Unknown perturbation '{spec}' (--perturb): give one of {', '.join(BUILT_IN)}.")

"""Prediction for models that read clinical text and spatial prompts (TextAndPromptTrainer).

Such a model predicts one label per pass, as every prompt model does; each pass is conditioned on the case's text
and the label predicted (the network's target token). From a case's entry of the prompts file:

* the case's text: the ``text`` of one of its prompts (at most one, it is the case's clinical note), else its
  entry in a clinical-text sidecar (``--clinical-text``), else none: the spatial prompts alone;
* the labels predicted: every prompt's label. A prompt with points, boxes or a mask gives its label those
  prompts; a prompt with text only gives its label (``"label"``) none, the text alone decides; a text-only prompt
  without a label in a dataset of several labels asks for every label not otherwise prompted. A case with no
  prompts but a sidecar entry: every label, text alone.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import List, Optional

from nnunet_prompt.networks.contract import unwrap
from nnunet_prompt.prompts.geometry import ImageGeometry
from nnunet_prompt.prompts.model import Prompt, PromptError
from nnunet_prompt.prompts.regions_or_labels import prompt_targets


def takes_text_and_prompts(predictor) -> bool:
    return predictor.clinical_context is not None and predictor.prompt_encoding is not None


def case_entry(predictor, case: str) -> dict:
    """The clinical entry every label's pass of the case is conditioned on (empty text: prompts alone)."""
    key = predictor.clinical_context.entry_key
    entry = dict(predictor.clinical_entries.get(case, {}))
    texts = [p.text for p in predictor.case_prompts.get(case, []) if p.text is not None]
    if len(texts) > 1:
        raise PromptError(f"Case '{case}' has {len(texts)} prompts with 'text' in '{predictor.prompts_source}'; the "
                          f"text is the case's clinical note, one per case: keep it in one prompt (it conditions every "
                          f"label's prediction).")
    if texts:
        entry["text"] = texts[0]
    entry.setdefault("text", "")
    entry.setdefault("fields", {})
    if key == "fields" and texts:
        raise PromptError(f"Case '{case}' in '{predictor.prompts_source}' gives text, but this model reads the "
                          f"structured 'fields' of a clinical-text sidecar (--clinical-text): remove the text.")
    return entry


def per_label_prompts(predictor, case: str) -> Optional[List[Prompt]]:
    """The case's prompts as one spatial prompt per label predicted (see the module doc); None if it has none."""
    prompts = predictor.case_prompts.get(case)
    labels = prompt_targets(predictor.dataset_json)
    if prompts is None:
        if case in predictor.clinical_entries:
            return [Prompt(label=name) for name in labels]
        return None
    out, asks_all = [], False
    for p in prompts:
        if not p.has_location and p.label is None and len(labels) > 1:
            asks_all = True
            continue
        out.append(replace(p, text=None))
    if asks_all:
        named = {p.resolve_label(labels, case, predictor.prompts_source) for p in out}
        out += [Prompt(label=name) for name, value in labels.items() if value not in named]
    return out


def check_case(predictor, case: str, image_file: str) -> None:
    """Everything ``prepare_case`` will need, checked before anything is predicted."""
    prompts = predictor.case_prompts.get(case)
    if prompts is None and case not in predictor.clinical_entries:
        if predictor.allow_missing_prompts:
            return
        raise PromptError(f"No prompt for case '{case}' in prompts file '{predictor.prompts_source}'. Add an entry "
                          f"\"{case}\": {{\"text\": ..., \"positive_points\": ...}} (text, clicks or both), or pass "
                          f"--allow-missing-prompts to predict such cases as background.")
    for p in prompts or []:
        predictor.check_prompt_kinds(p, case)
    case_entry(predictor, case)
    geometry = ImageGeometry.from_file(image_file)
    labels = prompt_targets(predictor.dataset_json)
    seen = set()
    for p in per_label_prompts(predictor, case):
        label = p.resolve_label(labels, case, predictor.prompts_source)
        if label in seen:
            raise PromptError(f"Case '{case}' has two prompts for label {label} in '{predictor.prompts_source}'; "
                              f"merge them into one prompt.")
        seen.add(label)
        p.to_voxel(geometry, case, predictor.prompts_source)


def prepare_case(predictor, case: str, preprocessed_shape, properties: dict):
    """(the case's clinical entry, {label: prompt channels}) for ``PromptPredictor.predict_prompted_logits``."""
    channels = predictor.prepare_case_prompts(case, preprocessed_shape, properties,
                                              prompts=per_label_prompts(predictor, case))
    return case_entry(predictor, case), channels


def label_conditioning(predictor, label):
    """The conditioning of one label's pass: the case's text and the label's target token (no-op for other models)."""
    if not takes_text_and_prompts(predictor):
        return nullcontext()
    if predictor._current_case_entry is None:
        raise RuntimeError("This model reads text beside the prompts: predict through predict_from_files after "
                           "set_prompts(), or set the case's entry first.")
    return unwrap(predictor.network).conditioned_on([predictor._current_case_entry], targets=[label])

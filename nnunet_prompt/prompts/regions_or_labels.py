"""What a prompt addresses in a label dataset and in a region dataset, in nnU-Net's own terms.

A prompt addresses one *target* of the dataset: an entry of nnU-Net's ``LabelManager.foreground_labels`` (an int
label value) for a label dataset, an entry of ``LabelManager.foreground_regions`` (the tuple of label values the
region covers, or an int) for a region dataset (``"labels"`` given as lists, with ``regions_class_order``, as
``nnunet-prompt convert ... --overlap regions`` writes them: ``{"CTV": [1, 2], "GTV": [2]}``). A target's key is
exactly what nnU-Net's evaluation uses and ``summary.json`` writes (``1``; ``(1, 2)``); its mask in a label map is
the union of its label values.

A prompt model predicts one target per pass (background vs object). The per-target object logits are combined
into the logit map nnU-Net's export expects from the dataset's label manager:

* labels: one channel per label value, background 0, a prompted label's channel the object-vs-background logit
  difference ``d``, unprompted labels ``UNPROMPTED_LOGIT``; the export's argmax then picks the more confident of
  overlapping prompted objects;
* regions: one channel per foreground region (no background channel), ``d`` for prompted regions and
  ``UNPROMPTED_LOGIT`` elsewhere. The export's sigmoid gives ``sigmoid(d)``, the object probability of the 2-class
  softmax, and paints regions in ``regions_class_order``: nested regions come out as nnU-Net's own region models
  write them.

Training keeps nnU-Net's label-map targets (``training_label_manager``: no region channels, nnU-Net's label loss on
the prompt model's two outputs) and turns them into 'one target vs rest' (``one_target_vs_rest``).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np
import torch

from nnunetv2.utilities.label_handling.label_handling import LabelManager

TargetKey = Union[int, Tuple[int, ...]]
UNPROMPTED_LOGIT = -100.0


def dataset_label_manager(dataset_json: dict) -> LabelManager:
    return LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))


def prompt_targets(dataset_json: dict) -> Dict[str, TargetKey]:
    """name -> target key, in dataset.json's order, background and ignore left out: the label value (int) for a
    label dataset, the region as nnU-Net's ``foreground_regions`` has it (tuple of label values, or an int) for a
    region dataset."""
    lm = dataset_label_manager(dataset_json)
    out: Dict[str, TargetKey] = {}
    for name, value in dataset_json["labels"].items():
        if name == "ignore":
            continue
        values = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
        if set(values) == {0}:
            continue
        if lm.has_regions:
            out[name] = values if isinstance(value, (list, tuple)) else values[0]
        elif len(values) == 1:
            out[name] = values[0]
        else:  # cannot happen: a list of several values makes nnU-Net's label manager region-based
            raise ValueError(f"label '{name}': {value!r}")
    return out


def target_values(key: TargetKey) -> Tuple[int, ...]:
    return tuple(int(v) for v in key) if isinstance(key, (tuple, list)) else (int(key),)


def target_mask(seg, key: TargetKey):
    """Where a label map (numpy or torch) holds the target: the union of its label values."""
    values = target_values(key)
    if isinstance(seg, torch.Tensor):
        return torch.isin(seg, torch.as_tensor(values, dtype=seg.dtype, device=seg.device))
    return np.isin(seg, values)


def sorted_targets(keys: Iterable[TargetKey]) -> List[TargetKey]:
    """Targets ordered by their label values (for labels: by value)."""
    return sorted(keys, key=target_values)


def as_json(key: TargetKey):
    return list(key) if isinstance(key, tuple) else key


# ------------------------------------------------------------------ combined logit map (inference)
def logit_channel(label_manager: LabelManager, key: TargetKey) -> int:
    """The channel of a target in the logit map nnU-Net's export reads for the dataset."""
    if label_manager.has_regions:
        regions = label_manager.foreground_regions
        if key not in regions:
            raise KeyError(f"{key!r} is not a region of this dataset ({regions}).")
        return regions.index(key)
    return int(key)  # nnU-Net's label values are consecutive: channel = value


def unprompted_logits(label_manager: LabelManager, spatial_shape: Sequence[int],
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The logit map before any target is predicted: every voxel background."""
    out = torch.full((label_manager.num_segmentation_heads, *spatial_shape), UNPROMPTED_LOGIT, dtype=dtype)
    if not label_manager.has_regions:
        out[0] = 0
    return out


# ------------------------------------------------------------------------------------- training
def training_label_manager(label_manager: LabelManager) -> LabelManager:
    """The label manager a prompt trainer trains with: for a region dataset nnU-Net's ``force_use_labels`` view of
    the same labels, so that nnU-Net's data pipeline delivers label maps (the targets ``one_target_vs_rest`` turns
    into one region vs rest) and builds its label loss (softmax Dice + CE) for the two outputs (background, object)
    instead of the region loss (sigmoid per region channel). Label datasets keep theirs."""
    if not label_manager.has_regions:
        return label_manager
    return type(label_manager)(label_manager.label_dict, label_manager.regions_class_order, force_use_labels=True)


def one_target_vs_rest(target: List[torch.Tensor], keys: Sequence[TargetKey], ignore_label, generator) -> List[torch.Tensor]:
    """Pick one target per sample (uniformly among those present in the full-resolution patch, any target if none
    is) and turn every deep-supervision label-map target into 'that target vs rest' (1 = inside the target's
    label values), keeping nnU-Net's ignore label."""
    return targets_vs_rest(target, pick_targets(target[0], keys, generator), ignore_label)


def pick_targets(full: torch.Tensor, keys: Sequence[TargetKey], generator) -> List[TargetKey]:
    """One target per sample of a full-resolution label-map batch: uniformly among those present, any if none is."""
    keys = sorted_targets(keys)
    chosen = []
    for i in range(full.shape[0]):
        present_values = set(torch.unique(full[i]).tolist())
        present = [k for k in keys if present_values & set(target_values(k))]
        pool = present if present else keys
        j = int(torch.randint(len(pool), (1,), generator=generator, device=generator.device).item())
        chosen.append(pool[j])
    return chosen


def targets_vs_rest(target: List[torch.Tensor], chosen: Sequence[TargetKey], ignore_label) -> List[torch.Tensor]:
    """Every deep-supervision label-map target as 'the sample's chosen target vs rest', keeping the ignore label."""
    out = []
    for t in target:
        b = torch.stack([target_mask(t[i], k) for i, k in enumerate(chosen)]).to(t.dtype)
        if ignore_label is not None:
            b = torch.where(t == ignore_label, torch.full_like(t, ignore_label), b)
        out.append(b)
    return out

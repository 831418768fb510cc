"""`nnunet-prompt text-analysis`: LLMSeg's text perturbation analysis of a text-conditioned model.

Every test case is predicted twice by the real ``PromptPredictor`` (as ``nnunet-prompt predict --clinical-text``
does): with its own clinical entry and with the entry perturbed (``nnunet_prompt.text.perturbation``). The two
predictions are then read back from the files written and compared, per case and label (or region):

* volume (ml, from the image spacing) of each prediction and its change, perturbed minus own;
* side: the share of the label's predicted voxels on the patient's left of the image centre, for each prediction,
  and ``side_moved``, the absolute change of that share (1: the whole prediction changed side, 0: none of it).
  The patient's left-right axis is the world x axis in ITK's LPS convention (patient left = +x); each voxel's
  world position comes from the image's origin, spacing and direction, so an image stored flipped or rotated gives
  the patient's side, not an array index's. The reference is the image centre (the world x of the middle of the
  image grid), not a body midline detected in the image;
* Dice between the two predictions, and Dice of each against the reference label.

Dice of two empty masks is NaN and left out of means (``metrics.EMPTY_MASK_POLICY``); so are side shares of an
empty prediction. Writes OUTPUT/text_analysis.json, .csv and .png, the predictions (OUTPUT/predictions/own,
OUTPUT/predictions/perturbed) and the perturbed entries (OUTPUT/clinical_text_perturbed.json).
"""
from __future__ import annotations

import csv
import io
import os
from typing import Dict, Optional, Sequence

import numpy as np

from nnunet_prompt.evaluation.evaluate_folder import _json_safe  # NaN as null: JSON has no NaN
from nnunet_prompt.evaluation.metrics import overlap_counts
from nnunet_prompt.io_utils import atomic_path, atomic_write_json
from nnunet_prompt.prompts.model import PromptError

SIDE_REFERENCE = ("patient's left = world +x (ITK LPS) of each voxel centre (origin, spacing, direction), left of the "
                  "image centre's world x; side_moved = |left share own - left share perturbed|")
DICE_DEFINITION = "2|A and B| / (|A| + |B|) from voxel counts; both masks empty: NaN (null), left out of means"
PER_LABEL = ("volume_own_ml", "volume_perturbed_ml", "volume_change_ml", "left_share_own", "left_share_perturbed",
             "side_moved", "dice_own_vs_perturbed", "dice_own_vs_reference", "dice_perturbed_vs_reference")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (as ``metrics.EMPTY_MASK_POLICY``)."""
    tp, fp, fn = overlap_counts(np.asarray(a, bool), np.asarray(b, bool))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def patient_left(mask_zyx: np.ndarray, image) -> np.ndarray:
    """For each voxel of a (z, y, x) mask on a SimpleITK image's grid (``np.argwhere`` order): whether it lies on
    the patient's left of the image centre (see the module doc)."""
    idx_xyz = np.argwhere(mask_zyx)[:, ::-1].astype(float)
    # world x of a voxel = origin_x + (direction @ (spacing * index))_x
    row = np.asarray(image.GetDirection(), float).reshape(3, 3)[0] * np.asarray(image.GetSpacing(), float)
    centre = (np.asarray(image.GetSize(), float) - 1) / 2
    return (idx_xyz - centre) @ row > 0


def left_share(mask_zyx: np.ndarray, image) -> float:
    """Share of a mask's voxels on the patient's left of the image centre; NaN for an empty mask."""
    left = patient_left(mask_zyx, image)
    return float(left.mean()) if left.size else float("nan")


def compare_case(own: np.ndarray, perturbed: np.ndarray, reference: np.ndarray, image,
                 targets: Dict[str, object]) -> Dict[str, dict]:
    """The per-label values of one case (``PER_LABEL``); ``image``: a SimpleITK image of the case's grid."""
    ml = float(np.prod(image.GetSpacing())) / 1000.0
    out = {}
    for name, value in targets.items():
        values = list(value) if isinstance(value, (list, tuple)) else [int(value)]
        a, b, r = np.isin(own, values), np.isin(perturbed, values), np.isin(reference, values)
        la, lb = left_share(a, image), left_share(b, image)
        out[name] = {"volume_own_ml": float(a.sum() * ml), "volume_perturbed_ml": float(b.sum() * ml),
                     "volume_change_ml": float((b.sum() - a.sum()) * ml), "left_share_own": la,
                     "left_share_perturbed": lb, "side_moved": abs(la - lb),
                     "dice_own_vs_perturbed": dice(a, b), "dice_own_vs_reference": dice(a, r),
                     "dice_perturbed_vs_reference": dice(b, r)}
    return out


def _nanmean(values) -> Optional[float]:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else None


def summarise(cases: Dict[str, dict], targets: Sequence[str]) -> dict:
    """Means over cases per label (NaN values left out, ``n`` says how many were not)."""
    overall = {}
    for name in targets:
        rows = [c["labels"][name] for c in cases.values()]
        overall[name] = {k: _nanmean([r[k] for r in rows]) for k in PER_LABEL}
        overall[name]["n"] = {k: int(sum(not np.isnan(r[k]) for r in rows)) for k in PER_LABEL}
    return {"labels": overall, "cases": len(cases),
            "cases_with_changed_input": int(sum(c["input_changed"] for c in cases.values()))}


def predict_entries(predictor, images: str, entries: Dict[str, dict], source: str, output_folder: str,
                    npp: int = 1, nps: int = 1) -> None:
    """Predict every case of ``images`` with its clinical entry (the sidecar format) through ``predictor`` (an
    initialised text-conditioned ``PromptPredictor``), as ``nnunet-prompt predict --clinical-text`` does."""
    predictor.set_prompts({}, None)
    predictor.set_clinical_text(entries, source)
    predictor.check_prompts_for_images(images)
    predictor.predict_from_files(images, output_folder, save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=npp, num_processes_segmentation_export=nps)


def check_inputs(predictor, model_folder: str, images: str, entries: Dict[str, dict], source: str,
                 labels_folder: str) -> list:
    """The cases of ``images`` (sorted), after refusing a model that takes no text and a case without its clinical
    entry or its reference label."""
    from nnunet_prompt.inference.predictor import input_cases
    if predictor.clinical_context is None:
        raise PromptError(f"Model '{model_folder}' ({predictor.trainer_name}) takes spatial prompts, not clinical "
                          f"text: text-analysis needs a text-conditioned model (TextPromptTrainer).")
    key = predictor.clinical_context.entry_key
    ending = predictor.dataset_json["file_ending"]
    cases = sorted(input_cases(images, predictor.dataset_json))
    for case in cases:
        if key not in entries.get(case, {}):
            raise PromptError(f"Case '{case}' has no clinical {key} in '{source}': text-analysis compares each case's "
                              f"own {key} with its perturbed {key}. Add an entry for it, or leave its image out of -i.")
        if not os.path.isfile(os.path.join(labels_folder, case + ending)):
            raise PromptError(f"Case '{case}' has no reference label '{os.path.join(labels_folder, case + ending)}' "
                              f"(-l): give the folder of the cases' labels (e.g. labelsTs).")
    return cases


def _read(path: str) -> tuple:
    import SimpleITK as sitk
    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), image


def analyse_predictions(cases: Sequence[str], own_folder: str, perturbed_folder: str, labels_folder: str,
                        dataset_json: dict, own: Dict[str, dict], perturbed: Dict[str, dict], key: str) -> dict:
    """Per case: the entry the model read, its perturbed version, and the per-label values, from the files."""
    from nnunet_prompt.prompts.regions_or_labels import prompt_targets
    targets = prompt_targets(dataset_json)
    ending = dataset_json["file_ending"]
    out = {}
    for case in cases:
        a, image = _read(os.path.join(own_folder, case + ending))
        b, _ = _read(os.path.join(perturbed_folder, case + ending))
        r, _ = _read(os.path.join(labels_folder, case + ending))
        if r.shape != a.shape:
            raise PromptError(f"Case '{case}': the reference label (-l) has shape {r.shape}, the image {a.shape} "
                              f"(z, y, x): is it this case's label?")
        out[case] = {"entry": own[case][key], "perturbed_entry": perturbed[case][key],
                     "input_changed": own[case][key] != perturbed[case][key],
                     "labels": compare_case(a, b, r, image, targets)}
    return out


def write_csv(cases: Dict[str, dict], path: str) -> None:
    buffer = io.StringIO()
    w = csv.writer(buffer)
    w.writerow(["case", "label", "input_changed", *PER_LABEL])
    for case, c in cases.items():
        for name, v in c["labels"].items():
            w.writerow([case, name, int(c["input_changed"]), *(f"{v[k]:.6g}" for k in PER_LABEL)])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(buffer.getvalue())


def plot(cases: Dict[str, dict], title: str, png: str) -> None:
    """Per case and label: Dice between the two predictions (top), volume change in ml (bottom)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(next(iter(cases.values()))["labels"]) if cases else []
    x = np.arange(len(cases))
    width = 0.8 / max(len(names), 1)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.6 * len(cases) + 2), 6), sharex=True)
    for i, name in enumerate(names):
        for ax, k in zip(axes, ("dice_own_vs_perturbed", "volume_change_ml")):
            ax.bar(x + (i - (len(names) - 1) / 2) * width, [c["labels"][name][k] for c in cases.values()], width,
                   label=name)
    axes[0].set_ylabel("Dice own vs perturbed")
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylabel("volume change (ml)")
    axes[1].axhline(0, color="black", linewidth=0.5)
    axes[1].set_xticks(x, list(cases), rotation=60, ha="right", fontsize=7)
    axes[0].set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def text_analysis(predictor, model_folder: str, images: str, entries: Dict[str, dict], source: str,
                  labels_folder: str, perturbation, output_folder: str, npp: int = 1, nps: int = 1) -> dict:
    """The whole analysis (see the module doc) with an initialised ``PromptPredictor``; returns the report."""
    from nnunet_prompt.clinical_text import SIDECAR_FORMAT
    cases = check_inputs(predictor, model_folder, images, entries, source, labels_folder)
    key = predictor.clinical_context.entry_key
    own = {c: entries[c] for c in cases}
    perturbed = {c: perturbation.apply(entries[c]) for c in cases}
    perturbed_path = os.path.join(output_folder, "clinical_text_perturbed.json")
    atomic_write_json({"format": SIDECAR_FORMAT, "cases": perturbed}, perturbed_path)
    folders = {k: os.path.join(output_folder, "predictions", k) for k in ("own", "perturbed")}
    predict_entries(predictor, images, own, source, folders["own"], npp, nps)
    predict_entries(predictor, images, perturbed, perturbed_path, folders["perturbed"], npp, nps)
    per_case = analyse_predictions(cases, folders["own"], folders["perturbed"], labels_folder, predictor.dataset_json,
                                   own, perturbed, key)
    report = {"model": model_folder, "trainer": predictor.trainer_name, "entry_read": key, "images": images,
              "clinical_text": source, "labels": labels_folder,
              "perturbation": {"spec": perturbation.spec, "what": perturbation.description},
              "predictions": folders, "side": SIDE_REFERENCE,
              "dice": DICE_DEFINITION,
              "overall": summarise(per_case, list(next(iter(per_case.values()))["labels"])), "cases": per_case}
    atomic_write_json(_json_safe(report), os.path.join(output_folder, "text_analysis.json"))
    write_csv(per_case, os.path.join(output_folder, "text_analysis.csv"))
    plot(per_case, f"{predictor.trainer_name}: {perturbation.description}",
         os.path.join(output_folder, "text_analysis.png"))
    return report


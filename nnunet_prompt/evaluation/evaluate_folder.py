"""`nnunet-prompt evaluate`: Dice, IoU, HD95, ASSD and NSD per case and label (or region), JSON + CSV."""
from __future__ import annotations

import csv
import io
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_prompt.evaluation.metrics import (ASSD_DEFINITION, EMPTY_MASK_POLICY, HD95_DEFINITION, METRICS,
                                              NSD_DEFINITION, binary_metrics)
from nnunet_prompt.io_utils import atomic_path, atomic_write_json


class EvaluationError(ValueError):
    pass


def _targets(dataset_json: dict) -> Dict[str, object]:
    """name -> label value or region (list of values), background and ignore excluded."""
    return {n: v for n, v in dataset_json["labels"].items()
            if n not in ("background", "ignore") and not (not isinstance(v, (list, tuple)) and int(v) == 0)}


def _mask(seg: np.ndarray, value) -> np.ndarray:
    return np.isin(seg, list(value)) if isinstance(value, (list, tuple)) else seg == int(value)


def _label_values(dataset_json: dict) -> set:
    values = set()
    for v in dataset_json["labels"].values():
        values.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return values


def _read_label_map(rw, path: str, case: str, label_values: set, defined_by: str = "dataset.json",
                    hint: str = "Is it from another dataset?"):
    """Read a reference or prediction and check that it is a whole label map of ``label_values`` (the dataset's
    labels, or the values a label mapping names: ``defined_by`` says which, ``hint`` what to do)."""
    from nnunet_prompt.image_files import ImageFileError, check_image_file
    try:
        check_image_file(path)
        seg, props = rw.read_seg(path)
    except ImageFileError as e:
        raise EvaluationError(f"Case '{case}': {e}") from None
    except RuntimeError as e:
        raise EvaluationError(f"Case '{case}': '{path}' cannot be read ({str(e).strip().splitlines()[-1]}).") from None
    if not np.all(np.isfinite(seg)) or not np.all(seg == np.round(seg)):
        raise EvaluationError(f"Case '{case}': '{path}' is not a label map (it holds non-integer values, e.g. "
                              f"probabilities). Evaluate the segmentation (nnU-Net's CASE{os.path.splitext(path)[1]}, "
                              f"not its .npz probabilities), or threshold the map first.")
    unknown = sorted(set(np.unique(seg).astype(int).tolist()) - label_values)
    if unknown:
        raise EvaluationError(f"Case '{case}': '{path}' holds label value(s) {unknown[:10]} that {defined_by} does not "
                              f"define (its labels: {sorted(label_values)}). {hint}")
    return seg, props


def grid_problems(shape, props: dict, pshape, pprops: dict) -> List[str]:
    """How a second image's grid (``pshape``, ``pprops``: nnU-Net reader properties) differs from the first's: shape,
    spacing, origin (beyond 5 % of a voxel) and direction; empty if they lie on one grid."""
    problems = []
    if tuple(shape) != tuple(pshape):
        problems.append(f"shape {tuple(pshape[1:])} vs {tuple(shape[1:])}")
    if not np.allclose(props["spacing"], pprops["spacing"], rtol=1e-4):
        problems.append(f"spacing {list(pprops['spacing'])} vs {list(props['spacing'])}")
    a, b = props.get("sitk_stuff", {}), pprops.get("sitk_stuff", {})
    if "origin" in a and "origin" in b:
        spacing = np.asarray(a["spacing"], float)
        if np.any(np.abs(np.subtract(a["origin"], b["origin"])) > 0.05 * spacing):
            problems.append(f"origin {list(b['origin'])} vs {list(a['origin'])} (mm)")
        if not np.allclose(a["direction"], b["direction"], atol=1e-4):
            problems.append(f"direction {list(b['direction'])} vs {list(a['direction'])}")
    return problems


def _check_same_grid(case: str, pred_path: str, shape, props: dict, pshape, pprops: dict) -> None:
    """The prediction must lie where the reference lies: same shape, spacing, origin and direction (metrics in mm
    of two images that do not overlap in space mean nothing)."""
    problems = grid_problems(shape, props, pshape, pprops)
    if problems:
        raise EvaluationError(f"Case '{case}': prediction '{pred_path}' does not match the reference's grid: "
                              f"{'; '.join(problems)}. Predict on the reference's image, or resample the prediction "
                              f"onto it (nearest neighbour).")


def evaluate_folders(gt_folder: str, pred_folder: str, dataset_json: dict, nsd_tolerance_mm: float = 2.0,
                     output_json: Optional[str] = None, dataset_json_source: str = "The dataset.json") -> dict:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending
    if not isinstance(dataset_json, dict) or not isinstance(dataset_json.get("labels"), dict) \
            or "file_ending" not in dataset_json:
        raise EvaluationError(f"{dataset_json_source} has no 'labels' mapping or no 'file_ending': give the "
                              f"dataset.json of the dataset the references belong to (nnUNet_raw/DatasetXXX/dataset.json).")
    for what, folder in (("Reference", gt_folder), ("Prediction", pred_folder)):
        if not os.path.isdir(folder):
            raise EvaluationError(f"{what} folder '{folder}' does not exist.")
    ending = dataset_json["file_ending"]
    gt_cases = sorted(f[:-len(ending)] for f in os.listdir(gt_folder) if f.endswith(ending))
    if not gt_cases:
        raise EvaluationError(f"No reference files ending in '{ending}' in '{gt_folder}'.")
    pred_cases = {f[:-len(ending)] for f in os.listdir(pred_folder) if f.endswith(ending)}
    missing = [c for c in gt_cases if c not in pred_cases]
    if missing:
        raise EvaluationError(f"Prediction folder '{pred_folder}' lacks {len(missing)} case(s) the reference folder has: "
                              f"{missing[:10]}{' ...' if len(missing) > 10 else ''}. Predict them or evaluate a "
                              f"reference folder holding only the predicted cases.")
    targets = _targets(dataset_json)
    label_values = _label_values(dataset_json)
    rw = determine_reader_writer_from_file_ending(ending, os.path.join(gt_folder, gt_cases[0] + ending), False, True)()
    per_case: List[dict] = []
    for case in tqdm(gt_cases, desc="evaluating", disable=len(gt_cases) < 3):
        ref, props = _read_label_map(rw, os.path.join(gt_folder, case + ending), case, label_values)
        pred, pprops = _read_label_map(rw, os.path.join(pred_folder, case + ending), case, label_values)
        _check_same_grid(case, os.path.join(pred_folder, case + ending), ref.shape, props, pred.shape, pprops)
        spacing = props["spacing"]
        entry = {"case": case, "metrics": {}}
        for name, value in targets.items():
            entry["metrics"][name] = binary_metrics(_mask(pred[0], value), _mask(ref[0], value), spacing,
                                                    nsd_tolerance_mm)
        per_case.append(entry)

    def mean_of(name, m):
        vals = [c["metrics"][name][m] for c in per_case if not np.isnan(c["metrics"][name][m])]
        return float(np.mean(vals)) if vals else float("nan")

    summary = {
        "definitions": {"HD95": HD95_DEFINITION, "ASSD": ASSD_DEFINITION, "NSD": NSD_DEFINITION,
                        "empty_masks": EMPTY_MASK_POLICY, "nsd_tolerance_mm": nsd_tolerance_mm},
        "mean": {name: {m: mean_of(name, m) for m in METRICS} | {
            "n_both_empty": sum(np.isnan(c["metrics"][name]["Dice"]) for c in per_case)} for name in targets},
        "metric_per_case": per_case,
    }
    if output_json:
        atomic_write_json(_json_safe(summary), output_json)
        with atomic_path(os.path.splitext(output_json)[0] + ".csv") as tmp:
            with open(tmp, "w", newline="") as f:
                f.write(per_case_csv(summary))
    return summary


def per_case_csv(summary: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "target", *METRICS])
    for c in summary["metric_per_case"]:
        for name, m in c["metrics"].items():
            w.writerow([c["case"], name, *[m[k] for k in METRICS]])
    return buf.getvalue()


def _json_safe(o):
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_json_safe(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return None if np.isnan(o) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return o


def print_summary(summary: dict) -> None:
    d = summary["definitions"]
    print(f"{'target':<16}" + "".join(f"{m:>10}" for m in METRICS) + f"{'both empty':>12}")
    for name, m in summary["mean"].items():
        print(f"{name:<16}" + "".join(f"{m[k]:>10.3f}" for k in METRICS) + f"{m['n_both_empty']:>12d}")
    print(f"\n{d['HD95']}\n{d['ASSD']}\n{d['NSD']} (tolerance {d['nsd_tolerance_mm']} mm)\nempty masks: {d['empty_masks']}")

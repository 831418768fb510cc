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


def evaluate_folders(gt_folder: str, pred_folder: str, dataset_json: dict, nsd_tolerance_mm: float = 2.0,
                     output_json: Optional[str] = None) -> dict:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending
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
    rw = determine_reader_writer_from_file_ending(ending, os.path.join(gt_folder, gt_cases[0] + ending), False, True)()
    per_case: List[dict] = []
    for case in tqdm(gt_cases, desc="evaluating", disable=len(gt_cases) < 3):
        ref, props = rw.read_seg(os.path.join(gt_folder, case + ending))
        pred, pprops = rw.read_seg(os.path.join(pred_folder, case + ending))
        if ref.shape != pred.shape or not np.allclose(props["spacing"], pprops["spacing"], rtol=1e-4):
            raise EvaluationError(f"Case '{case}': prediction {pred.shape[1:]} / spacing {pprops['spacing']} does not "
                                  f"match the reference {ref.shape[1:]} / {props['spacing']}.")
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

"""Segmentation metrics with explicit definitions: Dice, IoU, HD95, ASSD and NSD, in millimetres.

Overlap metrics are computed from voxel counts exactly as nnU-Net's ``compute_metrics`` does, so Dice
and IoU equal ``nnUNetv2_evaluate_folder`` on the same files. Surface metrics come from MONAI
(``monai.metrics``, the implementation SAM-RT used), called with the image spacing:

* surface: the mask's boundary voxels (the mask minus its binary erosion), MONAI's default;
* HD95: ``max(P95(d(pred->ref)), P95(d(ref->pred)))``, the larger of the two *directed* 95th
  percentiles of boundary-voxel distances (MONAI's ``directed=False``), not the 95th percentile of the
  pooled distances;
* ASSD: the mean of all boundary-voxel distances of both directions pooled (MONAI, ``symmetric=True``);
* NSD at tolerance tau: the fraction of boundary voxels of both masks that lie within tau mm of the other
  mask's boundary (MONAI's ``compute_surface_dice``, counted per voxel, not area-weighted as in
  Nikolov et al.'s original).

Empty masks (``EMPTY_MASK_POLICY``): reference and prediction both empty: every metric is NaN and the
case is left out of means (counted as ``n_both_empty``); exactly one empty: Dice = IoU = NSD = 0 and
HD95 = ASSD = the image diagonal in mm (the worst possible distance), so a miss is penalised.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

HD95_DEFINITION = ("HD95 = max of the two directed 95th percentiles of boundary-voxel distances "
                   "(pred->ref, ref->pred), in mm, MONAI compute_hausdorff_distance(percentile=95, directed=False)")
ASSD_DEFINITION = "ASSD = mean of pooled boundary-voxel distances in both directions, mm (MONAI, symmetric=True)"
NSD_DEFINITION = ("NSD = share of boundary voxels of both masks within the tolerance (mm) of the other boundary, "
                  "voxel-counted (MONAI compute_surface_dice)")
EMPTY_MASK_POLICY = ("both empty: all metrics NaN, case excluded from means; one empty: Dice=IoU=NSD=0, "
                     "HD95=ASSD=image diagonal in mm")
METRICS = ("Dice", "IoU", "HD95", "ASSD", "NSD")


def overlap_counts(pred: np.ndarray, ref: np.ndarray):
    tp = int(np.sum(pred & ref))
    fp = int(np.sum(pred & ~ref))
    fn = int(np.sum(~pred & ref))
    return tp, fp, fn


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], nsd_tolerance_mm: float) -> Dict[str, float]:
    """Metrics of one structure. ``pred``/``ref`` boolean arrays, ``spacing`` in the arrays' axis order (mm)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"Prediction shape {pred.shape} differs from reference shape {ref.shape}.")
    tp, fp, fn = overlap_counts(pred, ref)
    out = {"TP": tp, "FP": fp, "FN": fn, "n_pred": tp + fp, "n_ref": tp + fn}
    if tp + fp + fn == 0:
        out.update({m: float("nan") for m in METRICS})
        return out
    out["Dice"] = 2 * tp / (2 * tp + fp + fn)
    out["IoU"] = tp / (tp + fp + fn)
    if not pred.any() or not ref.any():
        diagonal = float(np.linalg.norm(np.asarray(pred.shape) * np.asarray(spacing, float)))
        out.update({"HD95": diagonal, "ASSD": diagonal, "NSD": 0.0})
        return out
    import warnings
    import torch
    # MONAI takes one-hot (batch, class, *spatial); one foreground class here
    p = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
    r = torch.from_numpy(np.stack([~ref, ref])[None].astype(np.float32))
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about one of its own internal arguments (always_return_as_numpy)
        warnings.simplefilter("ignore", FutureWarning)
        out.update(_monai_surface_metrics(p, r, sp, nsd_tolerance_mm))
    return out


def _monai_surface_metrics(p, r, sp, nsd_tolerance_mm) -> Dict[str, float]:
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice
    out = {}
    out["HD95"] = float(compute_hausdorff_distance(p, r, include_background=False, percentile=95, directed=False,
                                                   spacing=sp)[0, 0])
    out["ASSD"] = float(compute_average_surface_distance(p, r, include_background=False, symmetric=True,
                                                         spacing=sp)[0, 0])
    out["NSD"] = float(compute_surface_dice(p, r, class_thresholds=[float(nsd_tolerance_mm)],
                                            include_background=False, spacing=sp)[0, 0])
    return out

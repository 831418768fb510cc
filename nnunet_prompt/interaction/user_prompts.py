"""Prompts a user would draw for a labelled target: used where a reference label stands in for the
clinician (the demo's held-out cases, tests, evaluation protocols)."""
from __future__ import annotations

import numpy as np


def prompt_from_label(label_path: str, label: int = 1, margin_vox: int = 1) -> dict:
    """A box around the target (widened by ``margin_vox`` voxels) and one positive click at its most
    interior voxel (largest distance to the boundary, in mm), both in world millimetres (LPS), as a
    prompt dict of the prompts-file format."""
    import SimpleITK as sitk
    from scipy.ndimage import distance_transform_edt
    img = sitk.ReadImage(label_path)
    m = sitk.GetArrayFromImage(img) == label  # z, y, x
    if not m.any():
        raise ValueError(f"Label file '{label_path}' has no foreground for label {label}: cannot derive a prompt "
                         f"from it. Leave the case out or give its prompt by hand.")
    zyx = np.argwhere(m)
    lo = np.maximum(zyx.min(0) - margin_vox, 0)[::-1]
    hi = np.minimum(zyx.max(0) + margin_vox, np.asarray(m.shape) - 1)[::-1]
    dt = distance_transform_edt(m, sampling=img.GetSpacing()[::-1])
    click = np.unravel_index(int(np.argmax(dt)), m.shape)[::-1]

    def world(idx):
        return [round(v, 3) for v in img.TransformContinuousIndexToPhysicalPoint([float(i) for i in idx])]

    return {"coordinates": "mm", "positive_points": [world(click)], "boxes": [{"min": world(lo), "max": world(hi)}]}

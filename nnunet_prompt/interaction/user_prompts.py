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


def next_click_mm(prediction: np.ndarray, target: np.ndarray, spacing_zyx, rng: np.random.Generator):
    """Where a user corrects ``prediction`` (z, y, x bool) towards ``target`` next: the point of the largest
    26-connected error region (missed target voxels give a positive click, false positives a negative one; a tie in
    size goes to the miss) farthest from the region's border, by the Euclidean distance in millimetres
    (``spacing_zyx``), the image border counting as border. Ties between equally deep voxels are broken by ``rng``.
    Returns ((z, y, x), positive) or None when there is no error.

    The evaluation protocols' rule. Training's ``InteractionSimulator.next_clicks`` applies the same rule with a
    chessboard distance in voxels, batched in torch on the GPU; on anisotropic CT that depth favours regions that
    are thick in slices rather than in millimetres, so evaluation measures it here in mm (scipy, on the CPU)."""
    from scipy.ndimage import distance_transform_edt, find_objects, label
    best = None
    for errors, positive in ((target & ~prediction, True), (prediction & ~target, False)):
        components, n = label(errors, structure=np.ones((3, 3, 3), bool))
        if n == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), components, k + 1, positive)
    if best is None:
        return None
    _, components, value, positive = best
    box = find_objects(components)[value - 1]
    # the region's bounding box, padded by one background voxel so the image border is a border too
    region = np.pad(components[box] == value, 1)
    depth = distance_transform_edt(region, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    deepest = np.argwhere(depth >= depth.max() * (1 - 1e-9))
    z, y, x = deepest[rng.integers(len(deepest))] + [s.start for s in box]
    return (int(z), int(y), int(x)), positive

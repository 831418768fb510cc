"""Oracle box prompts from reference label files (``nnunet-prompt boxes-from-labels``).

The MedSAM study gives every compared model the same boxes: one per object per slice, widened by a random
0-20 mm. This writes such boxes once, into a prompts file (docs/reference/prompts.md), which is then given to
every arm with ``nnunet-prompt predict --prompts``: all models see the same boxes.

Per case and per foreground label (region, in a region dataset) present in its label file: one prompt with
one 2D box per 8-connected component per slice (``interaction.slice_boxes``), in raw voxel coordinates
(x, y, z) = ITK index order, flat along the slice axis.

Slice axis: the axis nnU-Net's 2d configuration slices along, i.e. the first axis after the plans'
``transpose_forward`` (raw numpy axis ``transpose_forward[0]`` of the (z, y, x) array; (x, y, z) axis
``2 - transpose_forward[0]``) when plans are given; otherwise each image's lowest-resolution axis, the axis
nnU-Net's planner puts first (ties: z, as numpy's argmax over (z, y, x) spacing). For a typical axial CT
both give z. Margins are millimetres on the raw image's in-plane spacing.

Random margins are drawn per case from ``seed + crc32(case)``: a case gets the same boxes whatever other
cases the folder holds.
"""
from __future__ import annotations

import os
import sys
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nnunet_prompt.interaction.slice_boxes import slice_boxes
from nnunet_prompt.prompts.model import Box, Prompt, PromptError, PromptsByCase
from nnunet_prompt.prompts.regions_or_labels import prompt_targets, sorted_targets, target_mask


def slice_axis_xyz(spacing_xyz: Sequence[float], transpose_forward: Optional[Sequence[int]] = None) -> int:
    """The (x, y, z) axis boxes are flat along (see module doc)."""
    if transpose_forward is not None:
        return 2 - int(transpose_forward[0])
    return 2 - int(np.argmax(np.asarray(spacing_xyz, dtype=float)[::-1]))


def label_slice_boxes(mask_zyx: np.ndarray, spacing_xyz: Sequence[float], axis_xyz: int,
                      margin_mm: Tuple[float, float], generator: torch.Generator) -> List[Box]:
    """2D boxes (raw voxel (x, y, z), inclusive, flat along ``axis_xyz``) around every 8-connected component of
    a boolean (z, y, x) mask on every slice along that axis, each side widened by a random margin in mm."""
    axis_zyx = 2 - axis_xyz
    in_plane = [a for a in range(3) if a != axis_zyx]  # (z, y, x) axes of a slice, in array order
    spacing_zyx = np.asarray(spacing_xyz, dtype=float)[::-1]
    stack = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(mask_zyx, bool), axis_zyx, 0)))
    b = slice_boxes(stack, spacing_zyx[in_plane], margin_mm, generator)
    boxes = []
    for s, lo, hi in zip(b.slice.tolist(), b.lo.tolist(), b.hi.tolist()):
        lo_zyx, hi_zyx = [0, 0, 0], [0, 0, 0]
        lo_zyx[axis_zyx] = hi_zyx[axis_zyx] = s
        for k, a in enumerate(in_plane):
            lo_zyx[a], hi_zyx[a] = lo[k], hi[k]
        boxes.append(Box(tuple(float(v) for v in lo_zyx[::-1]), tuple(float(v) for v in hi_zyx[::-1])))
    return boxes


def _label_name(dataset_json: dict, key) -> object:
    """What a prompt's "label" says: the label's name (regions are addressed by name too)."""
    for name, value in prompt_targets(dataset_json).items():
        if value == key:
            return name
    return key


def boxes_from_labels(labels_folder: str, dataset_json: dict, margin_mm: Tuple[float, float], seed: int = 0,
                      transpose_forward: Optional[Sequence[int]] = None) -> Tuple[PromptsByCase, List[str]]:
    """{case: one prompt per present label with its per-slice boxes} for every label file of ``labels_folder``
    (named CASE + dataset.json's file_ending), and the cases left out because their label map is empty."""
    import SimpleITK as sitk
    from nnunet_prompt.image_files import ImageFileError, check_image_file
    ending = dataset_json["file_ending"]
    if not os.path.isdir(labels_folder):
        raise PromptError(f"Labels folder '{labels_folder}' does not exist (-l).")
    files = sorted(f for f in os.listdir(labels_folder) if f.endswith(ending) and not f.startswith("."))
    if not files:
        raise PromptError(f"No label files ending in {ending} in '{labels_folder}' (nnU-Net naming: CASE{ending}).")
    targets = prompt_targets(dataset_json)
    out: PromptsByCase = {}
    empty = []
    for f in files:
        case, path = f[:-len(ending)], os.path.join(labels_folder, f)
        try:
            check_image_file(path)
            img = sitk.ReadImage(path)
        except (ImageFileError, RuntimeError) as e:
            raise PromptError(f"Label file '{path}' (case '{case}') cannot be read: {e}") from None
        if img.GetDimension() != 3:
            raise PromptError(f"Label file '{path}' (case '{case}') is {img.GetDimension()}D; 3D label maps only.")
        seg = sitk.GetArrayFromImage(img)
        axis = slice_axis_xyz(img.GetSpacing(), transpose_forward)
        generator = torch.Generator().manual_seed(int(seed) + zlib.crc32(case.encode()))
        prompts = []
        for key in sorted_targets(targets.values()):
            mask = target_mask(seg, key)
            if mask.any():
                prompts.append(Prompt(label=_label_name(dataset_json, key), coordinates="voxel",
                                      boxes=label_slice_boxes(mask, img.GetSpacing(), axis, margin_mm, generator)))
        if prompts:
            out[case] = prompts
        else:
            empty.append(case)
    return out, empty


def plans_transpose_forward(dataset: str, plans_identifier: str) -> List[int]:
    """``transpose_forward`` of nnUNet_preprocessed/DATASET/PLANS.json (with a message naming the file)."""
    from nnunet_prompt.io_utils import read_json
    path = os.path.join(os.environ.get("nnUNet_preprocessed", ""), dataset, plans_identifier + ".json")
    if not os.path.isfile(path):
        raise PromptError(f"Plans '{path}' do not exist (-p {plans_identifier}): plan the dataset first, or leave -p out "
                          f"to slice along each image's lowest-resolution axis.")
    plans = read_json(path, "Plans file")
    return [int(v) for v in plans["transpose_forward"]]


def report_empty(empty: List[str], out=sys.stderr) -> None:
    if empty:
        print(f"nnunet-prompt: note: {len(empty)} case(s) have no foreground and get no entry (predict them with "
              f"--allow-missing-prompts, as background): {empty[:10]}{' ...' if len(empty) > 10 else ''}", file=out)

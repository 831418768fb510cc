"""Per-object, per-slice bounding boxes (the MedSAM study's box prompt).

The MedSAM study treats every object (each GTV-T and GTV-N instance) on every 2D slice as a target of
its own and boxes it with a random margin of 0-20 mm; its "nnU-Net w/ box" gives nnU-Net these boxes as
one extra input channel. Here, for a target volume (X, Y, Z) on nnU-Net's grid:

* slices are taken along axis 0, the axis nnU-Net's 2d configuration slices along (a 2D patch is a
  volume one slice thick, (1, Y, Z));
* on each slice, each 8-connected component of the target gets its own rectangle;
* each of its four sides is widened by its own uniform random margin in [lo, hi] mm, converted to voxels
  with the in-plane spacing (spacing[1], spacing[2]) and clipped to the slice;
* the box channel is the union of the rectangles; a slice without target gets none.

One implementation serves the simulated user (torch on the training device, all slices of a batch at
once) and the oracle boxes written from label files (``nnunet-prompt boxes-from-labels``, CPU tensors).
Margins come from the caller's torch generator, in a fixed component order, so a seed fixes the boxes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch

# the module, not the name: simulation imports this module in turn
from nnunet_prompt.interaction import simulation


@dataclass
class SliceBoxes:
    """Inclusive rectangles, one per (slice, component): ``slice`` (K,), ``lo`` and ``hi`` (K, 2) as (y, z)
    indices of the slice; all long tensors on the masks' device, ordered by slice, then component label."""
    slice: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    def __len__(self) -> int:
        return int(self.slice.numel())


def slice_components(masks: torch.Tensor) -> torch.Tensor:
    """8-connected components of a stack of 2D boolean masks (S, Y, Z) -> int labels (0 = background), unique
    across the stack. ``label_components`` (26-connected, 3D) on one-slice volumes (S, 1, Y, Z) is exactly
    this: its 3x3x3 neighbourhood reaches no other slice."""
    return simulation.label_components(masks[:, None])[:, 0]


def component_boxes(masks: torch.Tensor) -> SliceBoxes:
    """Tight bounding rectangle of every 8-connected component on every slice of (S, Y, Z) boolean masks."""
    labels = slice_components(masks.bool())
    s, y, z = torch.nonzero(labels, as_tuple=True)
    values, comp = torch.unique(labels[s, y, z], return_inverse=True)  # sorted labels: a deterministic order
    k = values.numel()
    dev = masks.device

    def reduce(v, how, init):
        return torch.full((k,), init, dtype=torch.long, device=dev).scatter_reduce(0, comp, v, how, include_self=True)

    big = int(max(masks.shape)) + 1
    lo = torch.stack([reduce(y, "amin", big), reduce(z, "amin", big)], 1)
    hi = torch.stack([reduce(y, "amax", -1), reduce(z, "amax", -1)], 1)
    sl = reduce(s, "amin", big)
    order = torch.argsort(sl * (labels.numel() + 1) + values, stable=True)  # by slice, then label
    return SliceBoxes(sl[order], lo[order], hi[order])


def margin_voxels(n: int, margin_mm: Tuple[float, float], spacing_yz: Sequence[float],
                  generator: torch.Generator) -> torch.Tensor:
    """(n, 4) random side margins in voxels, columns (y below, z below, y above, z above): each uniform in
    ``margin_mm`` millimetres, divided by that axis' spacing and rounded."""
    m_lo, m_hi = (float(v) for v in margin_mm)
    if not 0 <= m_lo <= m_hi:
        raise ValueError(f"box margin range must satisfy 0 <= low <= high (mm), got {margin_mm}")
    u = torch.rand((n, 4), generator=generator, device=generator.device, dtype=torch.float64)
    sp = torch.tensor([spacing_yz[0], spacing_yz[1]] * 2, dtype=torch.float64, device=generator.device)
    return torch.round((m_lo + (m_hi - m_lo) * u) / sp).long()


def widen(boxes: SliceBoxes, shape_yz: Sequence[int], margin_mm: Tuple[float, float], spacing_yz: Sequence[float],
          generator: torch.Generator) -> SliceBoxes:
    """Each side widened by its own random margin (``margin_voxels``), clipped to the slice."""
    m = margin_voxels(len(boxes), margin_mm, spacing_yz, generator).to(boxes.lo.device)
    limit = torch.tensor([int(shape_yz[0]) - 1, int(shape_yz[1]) - 1], device=boxes.lo.device)
    lo = torch.clamp(boxes.lo - m[:, :2], min=0)
    hi = torch.minimum(boxes.hi + m[:, 2:], limit)
    return SliceBoxes(boxes.slice, lo, hi)


def draw(boxes: SliceBoxes, shape: Sequence[int], device=None) -> torch.Tensor:
    """(S, Y, Z) boolean union of the rectangles: +1/-1 at their corners, summed over y and z (a 2D prefix
    sum), so any number of boxes costs one pass over the volume."""
    s_, y_, z_ = (int(v) for v in shape)
    device = device if device is not None else boxes.lo.device
    corners = torch.zeros((s_, y_ + 1, z_ + 1), dtype=torch.int32, device=device)
    if len(boxes):
        sl, lo, hi = boxes.slice.to(device), boxes.lo.to(device), boxes.hi.to(device) + 1
        one = torch.ones_like(sl, dtype=torch.int32)
        for ys, zs, sign in ((lo[:, 0], lo[:, 1], 1), (lo[:, 0], hi[:, 1], -1), (hi[:, 0], lo[:, 1], -1),
                             (hi[:, 0], hi[:, 1], 1)):
            corners.index_put_((sl, ys, zs), sign * one, accumulate=True)
    return corners.cumsum(1).cumsum(2)[:, :y_, :z_] > 0


def slice_boxes(masks: torch.Tensor, spacing_yz: Sequence[float], margin_mm: Tuple[float, float],
                generator: torch.Generator) -> SliceBoxes:
    """The widened per-component rectangles of every slice of (S, Y, Z) boolean masks."""
    return widen(component_boxes(masks), masks.shape[1:], margin_mm, spacing_yz, generator)


def slice_box_channel(targets: torch.Tensor, spacing: Sequence[float], margin_mm: Tuple[float, float],
                      generator: torch.Generator) -> torch.Tensor:
    """Box channel(s) of boolean targets (..., X, Y, Z), sliced along X (axis -3); ``spacing`` is the volume's
    3D spacing (X, Y, Z) in mm. Returns a boolean tensor of the targets' shape. All slices of all leading
    dimensions (a training batch) are processed at once."""
    shape = targets.shape
    flat = targets.reshape(-1, *shape[-2:]).bool()
    spacing_yz = np.asarray(spacing, dtype=float)[-2:]
    return draw(slice_boxes(flat, spacing_yz, margin_mm, generator), flat.shape).reshape(shape)

"""Regions of a volume (patches, the part of a volume an interaction predicts) and their neighbours.

A region is ``(lo, hi)``: per axis the first index and one past the last, on the grid of the volume it
belongs to (nnU-Net's preprocessed grid, where the session and cross-patch propagation work).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

Region = Tuple[Tuple[int, ...], Tuple[int, ...]]  # inclusive-exclusive (lo, hi) per axis


def region_around(center: Sequence[float], patch: Sequence[int], shape: Sequence[int]) -> Region:
    lo, hi = [], []
    for c, p, s in zip(center, patch, shape):
        p = min(int(p), int(s))
        start = int(np.clip(round(c) - p // 2, 0, s - p))
        lo.append(start)
        hi.append(start + p)
    return tuple(lo), tuple(hi)


def grown_region(region: Region, object_in_region: np.ndarray, patch: Sequence[int], shape: Sequence[int]) -> Optional[Region]:
    """The region enlarged by half a patch on every side where the object touches the region's border
    (sides on the image border excepted), or None if no side needs to grow."""
    lo, hi = list(region[0]), list(region[1])
    grew = False
    for a in range(3):
        if int(patch[a]) // 2 == 0:  # a zero step: this axis does not grow (slice-wise 2d models)
            continue
        first = np.take(object_in_region, 0, axis=a)
        last = np.take(object_in_region, -1, axis=a)
        if lo[a] > 0 and first.any():
            lo[a] = max(0, lo[a] - int(patch[a]) // 2)
            grew = True
        if hi[a] < shape[a] and last.any():
            hi[a] = min(int(shape[a]), hi[a] + int(patch[a]) // 2)
            grew = True
    return (tuple(lo), tuple(hi)) if grew else None


def region_slices(region: Region) -> Tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(*region))


def bounding_region(regions: Sequence[Region]) -> Region:
    lo = tuple(int(min(r[0][a] for r in regions)) for a in range(len(regions[0][0])))
    hi = tuple(int(max(r[1][a] for r in regions)) for a in range(len(regions[0][0])))
    return lo, hi


def neighbour_directions(ndim: int = 3) -> List[Tuple[int, ...]]:
    """The 3^ndim - 1 directions to the neighbouring patches (26 in 3D), each component in {-1, 0, 1}."""
    grids = torch.cartesian_prod(*[torch.tensor([-1, 0, 1])] * ndim).view(-1, ndim)
    return [tuple(int(v) for v in d) for d in grids.tolist() if any(d)]


def neighbour_regions(region: Region, shape: Sequence[int]) -> List[Tuple[Tuple[int, ...], Region]]:
    """(direction, region) of the up to 26 neighbours of a region: the region shifted by half its size along each
    axis (-1, 0 or +1 times), clipped into the image; neighbours that clipping makes coincide with the region
    or with each other are dropped. The direction returned is the one of the clipped shift."""
    lo, hi = np.asarray(region[0]), np.asarray(region[1])
    size = hi - lo
    stride = np.maximum(size // 2, 1)
    out, seen = [], {tuple(lo)}
    for d in neighbour_directions(len(size)):
        new_lo = np.clip(lo + np.asarray(d) * stride, 0, np.asarray(shape) - size)
        key = tuple(int(v) for v in new_lo)
        if key in seen:
            continue
        seen.add(key)
        out.append((tuple(int(v) for v in np.sign(new_lo - lo)), (key, tuple(int(v) for v in new_lo + size))))
    return out

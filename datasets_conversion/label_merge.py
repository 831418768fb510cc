"""Per-structure masks -> one nnU-Net label map, with an explicit overlap policy.

- ``priority``: one label per voxel; where structures overlap, the one listed first in the map's
  ``priority`` wins (the default map puts GTVs before CTV before organs).
- ``regions``: nothing is lost. Every combination of overlapping structures found in the dataset gets
  its own consecutive label value, and each structure becomes an nnU-Net *region* (the list of values
  that contain it), for nnU-Net's region-based training. Exported predictions paint regions in
  ``regions_class_order``, which reproduces nested structures (GTV inside CTV) exactly.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np


def merge_by_priority(masks: Dict[str, np.ndarray], label_values: Dict[str, int], priority: Sequence[str],
                      shape) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint8)
    for name in reversed(list(priority)):       # paint the lowest priority first, the winner last
        if name in masks:
            out[masks[name]] = label_values[name]
    return out


def combination_codes(masks: Dict[str, np.ndarray], names: Sequence[str], shape) -> np.ndarray:
    """Bit ``i`` of a voxel's code is set when structure ``names[i]`` covers it."""
    code = np.zeros(shape, dtype=np.int64)
    for i, name in enumerate(names):
        if name in masks:
            code[masks[name]] |= np.int64(1) << i
    return code


def regions_from_combinations(codes: Sequence[int], names: Sequence[str]) -> Tuple[Dict[int, int], Dict[str, List[int]], List[int]]:
    """Consecutive label values for the combination codes found, each structure's region (in paint order), and
    nnU-Net's ``regions_class_order`` (the value painted for each region, in that order).

    Codes are numbered by (number of structures, code), so single structures come first. Bigger regions are
    painted first so that nested structures come out right."""
    ordered = sorted({int(c) for c in codes if c}, key=lambda c: (bin(c).count("1"), c))
    value_of = {c: v for v, c in enumerate(ordered, start=1)}
    regions = {name: [value_of[c] for c in ordered if c >> i & 1] for i, name in enumerate(names)}
    paint_order = sorted((n for n in names if regions[n]), key=lambda n: -len(regions[n]))
    regions = {n: regions[n] for n in paint_order}
    class_order = [value_of.get(1 << list(names).index(n), regions[n][0]) for n in paint_order]
    return value_of, regions, class_order


def relabel(codes: np.ndarray, value_of: Dict[int, int]) -> np.ndarray:
    out = np.zeros(codes.shape, dtype=np.uint8 if len(value_of) < 256 else np.uint16)
    for code, value in value_of.items():
        out[codes == code] = value
    return out

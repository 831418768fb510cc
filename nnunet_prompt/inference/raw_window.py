"""The object mask of one region of nnU-Net's preprocessed grid, brought back to the input image's grid alone.

nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape`` resamples the *whole* preprocessed
volume back to the raw grid. An interactive session changes one patch-sized region per click, so doing that
after every click makes a click on a CT cost seconds of resampling for a fraction of a second of network
(measured: 4.2 s of which the network 0.45 s at 150x512x512). Here only the raw voxels that the changed region
can reach are recomputed.

The result equals nnU-Net's conversion voxel for voxel (up to float rounding at the 0.5 boundary) because it
samples the same points with the same rule: nnU-Net's default ``resample_data_or_seg_to_shape`` (order 1, i.e.
skimage's ``resize`` with ``mode='edge'``, which samples raw voxel i at preprocessed coordinate
``(i + 0.5) * n_pre / n_raw - 0.5``, clamped at the edges), and along the low-resolution axis of anisotropic
data (``separate z``) the nearest slice when ``order_z`` is 0 (scipy's ``map_coordinates`` with order 0 and
``mode='nearest'``). Linear interpolation is separable and a two-class argmax of (0, l) is the sign of l, so
interpolating the logit difference axis by axis gives the same mask. No library resamples a *window* of a
grid-to-grid resize with the whole grid's sampling points, hence the few lines below. Any other resampling
function (a custom plan) falls back to nnU-Net's whole-volume conversion, so results never differ silently.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from nnunet_prompt.prompts.regions import Region

RawBox = Tuple[Tuple[int, int], ...]  # half-open (start, stop) per axis of the raw (z, y, x) array


def _linear_taps(start: int, stop: int, n_pre: int, n_raw: int):
    c = np.clip((np.arange(start, stop) + 0.5) * (n_pre / n_raw) - 0.5, 0, n_pre - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_pre - 1)
    return i0, i1, c - i0


def _nearest_taps(start: int, stop: int, n_pre: int, n_raw: int):
    c = (np.arange(start, stop) + 0.5) * (n_pre / n_raw) - 0.5
    i0 = np.clip(np.floor(c + 0.5), 0, n_pre - 1).astype(np.int64)  # scipy's order-0 rounding, 'nearest' edges
    return i0, i0, np.zeros(len(i0))


class RawWindowExport:
    """Maps object logits on one case's preprocessed grid to a binary object mask on its raw grid, window by window.

    ``properties``: nnU-Net's preprocessing properties of the case (``run_case_npy``)."""

    def __init__(self, plans_manager, configuration_manager, properties: dict, preprocessed_shape: Sequence[int]):
        self.plans_manager, self.configuration_manager, self.properties = plans_manager, configuration_manager, properties
        self.transpose_forward = [int(i) for i in plans_manager.transpose_forward]
        self.transpose_backward = [int(i) for i in plans_manager.transpose_backward]
        self.bbox = [(int(lo), int(hi)) for lo, hi in properties["bbox_used_for_cropping"]]
        self.n_pre = [int(s) for s in preprocessed_shape]
        self.n_raw = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
        self.raw_shape_zyx = tuple(int(properties["shape_before_cropping"][self.transpose_backward[a]]) for a in range(3))
        self.taps = self._sampling_rules()

    def _sampling_rules(self) -> Optional[list]:
        """Per preprocessed axis the sampling rule nnU-Net's conversion uses, or None when it is not one we mirror."""
        from nnunetv2.preprocessing.resampling.default_resampling import (determine_do_sep_z_and_axis,
                                                                          resample_data_or_seg_to_shape)
        cm = self.configuration_manager
        fn = cm.configuration.get("resampling_fn_probabilities")
        kwargs = dict(cm.configuration.get("resampling_fn_probabilities_kwargs", {}))
        if fn != resample_data_or_seg_to_shape.__name__ or kwargs.get("is_seg", False):
            return None
        order, order_z = int(kwargs.get("order", 3)), int(kwargs.get("order_z", 0))
        if self.n_pre == self.n_raw:
            return [_linear_taps] * 3  # no resampling: the identity, which linear taps give exactly
        if order != 1 or order_z not in (0, 1):
            return None
        spacing_t = [float(self.properties["spacing"][i]) for i in self.transpose_forward]
        current = list(cm.spacing) if len(cm.spacing) == 3 else [spacing_t[0], *cm.spacing]
        separate, axis = determine_do_sep_z_and_axis(kwargs.get("force_separate_z"), current, spacing_t,
                                                     kwargs.get("separate_z_anisotropy_threshold", 3))
        rules = [_linear_taps] * 3
        if separate and order_z == 0 and self.n_pre[axis] != self.n_raw[axis]:
            rules[axis] = _nearest_taps
        return rules

    @property
    def exact(self) -> bool:
        """False: this plan's resampling is not mirrored, every window falls back to the whole volume."""
        return self.taps is not None

    def raw_window(self, region: Region) -> Tuple[Tuple[int, int], ...]:
        """Raw voxels (cropped, transposed grid, half-open per axis) that preprocessed voxels in ``region`` reach."""
        out = []
        for a, (lo, hi) in enumerate(zip(*region)):
            s = self.n_pre[a] / self.n_raw[a]
            start = int(np.floor((lo - 1 + 0.5) / s - 0.5))  # one preprocessed voxel of margin: linear taps
            stop = int(np.ceil((hi + 0.5) / s - 0.5)) + 1
            out.append((max(0, start), min(self.n_raw[a], stop)))
        return tuple(out)

    def object_mask(self, object_logits: torch.Tensor, region: Optional[Region] = None) -> Tuple[RawBox, np.ndarray]:
        """(box on the raw (z, y, x) array, uint8 mask of that box) of the object whose logit (foreground minus
        background) is ``object_logits`` on the whole preprocessed grid, recomputed where ``region`` reaches
        (None: everywhere). Voxels outside nnU-Net's crop are background, as in nnU-Net's export."""
        if self.taps is None:
            return self._whole_volume(object_logits)
        region = region or ((0, 0, 0), tuple(self.n_pre))
        window = self.raw_window(region)
        values = object_logits
        index = []
        for a, (start, stop) in enumerate(window):
            i0, i1, w = self.taps[a](start, stop, self.n_pre[a], self.n_raw[a])
            index.append((i0, i1, w))
        # slice the preprocessed block the taps read, then interpolate axis by axis inside it
        block_lo = [int(i0.min()) if len(i0) else 0 for i0, _, _ in index]
        block_hi = [int(i1.max()) + 1 if len(i1) else 0 for _, i1, _ in index]
        block = values[tuple(slice(lo, hi) for lo, hi in zip(block_lo, block_hi))].double().cpu().numpy()
        for a, (i0, i1, w) in enumerate(index):
            a0 = np.take(block, i0 - block_lo[a], axis=a)
            a1 = np.take(block, i1 - block_lo[a], axis=a)
            shape = [1, 1, 1]
            shape[a] = len(w)
            w = w.reshape(shape)
            block = a0 * (1 - w) + a1 * w
        mask_t = (block > 0).astype(np.uint8)
        box_t = [(start + crop_lo, stop + crop_lo) for (start, stop), (crop_lo, _) in zip(window, self.bbox)]
        return self._to_raw_order(box_t, mask_t)

    def _to_raw_order(self, box_t, mask_t) -> Tuple[RawBox, np.ndarray]:
        box = tuple(box_t[self.transpose_backward[a]] for a in range(3))
        return box, np.ascontiguousarray(mask_t.transpose(self.transpose_backward))

    def _whole_volume(self, object_logits: torch.Tensor) -> Tuple[RawBox, np.ndarray]:
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        from nnunet_prompt.networks.contract import object_label_manager
        logits = torch.stack([torch.zeros_like(object_logits), object_logits]).float().cpu().numpy()
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, object_label_manager(), self.properties,
            return_probabilities=False)
        return tuple((0, int(s)) for s in seg.shape), np.asarray(seg, dtype=np.uint8)


def box_slices(box: RawBox) -> Tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)

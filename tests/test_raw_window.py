"""A region's object mask brought back to the image grid alone equals nnU-Net's whole-volume conversion there."""
import copy
import os

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_prompt.inference.raw_window import RawWindowExport, box_slices
from nnunet_prompt.networks.contract import object_label_manager


def _managers(planned_dataset, spacing):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from conftest import CONFIG, PLANS
    plans = load_json(os.path.join(planned_dataset["env"]["nnUNet_preprocessed"], planned_dataset["name"],
                                   PLANS + ".json"))
    plans = copy.deepcopy(plans)
    plans["configurations"][CONFIG]["spacing"] = list(spacing)
    pm = PlansManager(plans)
    return pm, pm.get_configuration(CONFIG)


def _nnunet_conversion(logits, pm, cm, props):
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    two = torch.stack([torch.zeros_like(logits), logits]).numpy()
    return convert_predicted_logits_to_segmentation_with_correct_shape(two, pm, cm, object_label_manager(), props)


@pytest.mark.parametrize("case_spacing, model_spacing", [
    ((1.0, 0.7, 0.7), (1.0, 1.0, 1.0)),   # isotropic enough: trilinear
    ((3.0, 0.8, 0.8), (1.0, 1.0, 1.0)),   # anisotropic case: nnU-Net resamples z separately (nearest slice)
    ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),   # no resampling at all
])
def test_region_mask_equals_nnunet_whole_volume_conversion(planned_dataset, case_spacing, model_spacing):
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    pm, cm = _managers(planned_dataset, model_spacing)
    before = [19, 47, 41]
    bbox = [[1, 18], [2, 45], [0, 41]]
    cropped = [hi - lo for lo, hi in bbox]
    props = {"spacing": list(case_spacing), "shape_before_cropping": before, "bbox_used_for_cropping": bbox,
             "shape_after_cropping_and_before_resampling": cropped}
    pre_shape = [int(v) for v in compute_new_shape(cropped, case_spacing, model_spacing)]
    export = RawWindowExport(pm, cm, props, pre_shape)
    assert export.exact
    g = torch.Generator().manual_seed(0)
    # smooth logits with many sign changes: a blurred noise field
    logits = torch.nn.functional.avg_pool3d(torch.randn(1, 1, *pre_shape, generator=g, dtype=torch.float64),
                                            3, 1, 1)[0, 0]
    whole = _nnunet_conversion(logits, pm, cm, props)
    box, mask = export.object_mask(logits)
    assert box == tuple(tuple(b) for b in bbox), "outside nnU-Net's crop nothing is ever foreground"
    full = np.zeros(before, np.uint8)
    full[box_slices(box)] = mask
    np.testing.assert_array_equal(full, whole)
    # a region: change the logits there only, recompute its window, paste, compare with the whole conversion
    region = ((2, 5, 7), (9, 20, 19))
    changed = logits.clone()
    changed[tuple(slice(a, b) for a, b in zip(*region))] = torch.randn(
        *[b - a for a, b in zip(*region)], generator=g, dtype=torch.float64)
    box, mask = export.object_mask(changed, region)
    assert all(b - a < s for (a, b), s in zip(box, before)), "the window is smaller than the image"
    full[box_slices(box)] = mask
    np.testing.assert_array_equal(full, _nnunet_conversion(changed, pm, cm, props))


def test_unmirrored_resampling_falls_back_to_nnunet(planned_dataset):
    pm, cm = _managers(planned_dataset, (1.0, 1.0, 1.0))
    cm.configuration["resampling_fn_probabilities_kwargs"] = dict(
        cm.configuration["resampling_fn_probabilities_kwargs"], order=3)
    props = {"spacing": [1.0, 0.7, 0.7], "shape_before_cropping": [8, 10, 12],
             "bbox_used_for_cropping": [[0, 8], [0, 10], [0, 12]],
             "shape_after_cropping_and_before_resampling": [8, 10, 12]}
    export = RawWindowExport(pm, cm, props, [8, 7, 8])
    assert not export.exact
    logits = torch.randn(8, 7, 8, dtype=torch.float64)
    box, mask = export.object_mask(logits, ((0, 0, 0), (2, 2, 2)))
    assert box == ((0, 8), (0, 10), (0, 12))
    np.testing.assert_array_equal(mask, _nnunet_conversion(logits, pm, cm, props))

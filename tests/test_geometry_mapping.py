"""Prompts land on the right voxel of nnU-Net's preprocessed grid, checked against nnU-Net's own
preprocessor on an image with anisotropic spacing, a non-zero origin, a non-identity direction, a crop
to nonzero, resampling and an axis transpose."""
import copy
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_prompt.prompts.geometry import ImageGeometry, PreprocessedGrid
from nnunet_prompt.prompts.model import Prompt

SIZE = (30, 26, 14)          # x, y, z
SPACING = (0.9, 1.3, 3.1)
ORIGIN = (12.5, -40.2, 88.0)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
MARKER = (19, 9, 8)          # x, y, z voxel of a bright marker


def _write_case(folder):
    arr = np.zeros(SIZE[::-1], np.float32)
    arr[2:12, 3:24, 4:27] = 10.0      # "body": nonzero region, so the crop is not trivial
    x, y, z = MARKER
    arr[z, y - 1:y + 2, x - 1:x + 2] = 1000.0  # 1 slice thick (3.1 mm), 3x3 in-plane
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    path = os.path.join(folder, "case_0000.nii.gz")
    sitk.WriteImage(img, path)
    return path, img


@pytest.fixture(scope="module")
def preprocessed(planned_dataset, tmp_path_factory):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    folder = tmp_path_factory.mktemp("geom")
    path, img = _write_case(str(folder))
    pre = os.path.join(os.environ["nnUNet_preprocessed"], planned_dataset["name"])
    plans = json.load(open(os.path.join(pre, "nnUNetPlansNarrow.json")))
    dataset_json = json.load(open(os.path.join(pre, "dataset.json")))
    plans = copy.deepcopy(plans)
    # numpy order of the raw array is (z, y, x); put x first, then z, then y
    plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    cfg = plans["configurations"]["3d_fullres"]
    cfg["spacing"] = [1.5, 2.0, 1.0]  # transposed order: x, z, y
    cfg["normalization_schemes"] = ["ZScoreNormalization"]
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    data, _, props = DefaultPreprocessor(verbose=False).run_case([path], None, pm, cm, dataset_json)
    return {"data": data[0], "props": props, "pm": pm, "cm": cm, "img": img}


def _marker_centroid(data):
    peak = data.max()
    base = np.median(data)
    w = np.where(data > base + 0.5 * (peak - base), data - base, 0)
    idx = np.indices(data.shape).reshape(3, -1)
    return (idx * w.reshape(-1)).sum(1) / w.sum()


def test_the_fixture_really_crops_resamples_and_transposes(preprocessed):
    props, data = preprocessed["props"], preprocessed["data"]
    assert [list(b) for b in props["bbox_used_for_cropping"]] != [[0, s] for s in props["shape_before_cropping"]]
    assert tuple(props["shape_after_cropping_and_before_resampling"]) != data.shape
    assert tuple(props["shape_before_cropping"]) == (SIZE[0], SIZE[2], SIZE[1])


def test_voxel_and_mm_point_land_on_the_marker(preprocessed):
    data, props, pm = preprocessed["data"], preprocessed["props"], preprocessed["pm"]
    grid = PreprocessedGrid(props, pm.transpose_forward, data.shape)
    geometry = ImageGeometry.from_nnunet_properties(props, grid.raw_shape_zyx)
    assert geometry.size == SIZE
    world = preprocessed["img"].TransformIndexToPhysicalPoint(MARKER)
    expected = _marker_centroid(data)
    for prompt in ({"positive_points": [list(MARKER)]},
                   {"coordinates": "mm", "positive_points": [list(world)]}):
        vp = Prompt.from_dict(prompt).to_voxel(geometry)
        mapped = grid.raw_to_preprocessed(vp.positive_points[0])
        np.testing.assert_allclose(mapped, expected, atol=0.6)
        assert grid.nearest_voxel(mapped) == tuple(int(v) for v in np.round(expected))
        # and back
        np.testing.assert_allclose(grid.preprocessed_to_raw(mapped), MARKER, atol=1e-9)


def test_box_and_mask_map_like_nnunets_segmentation_resampling(preprocessed):
    data, props, pm, cm = preprocessed["data"], preprocessed["props"], preprocessed["pm"], preprocessed["cm"]
    grid = PreprocessedGrid(props, pm.transpose_forward, data.shape)
    x, y, z = MARKER
    lo, hi = grid.box_to_preprocessed((x - 3, y - 3, z), (x + 3, y + 3, z))  # a 2D box on the marker's slice
    c = np.round(_marker_centroid(data)).astype(int)
    assert all(lo[a] <= c[a] <= hi[a] for a in range(3))
    flat = [a for a in range(3) if lo[a] == hi[a]]
    assert flat == [1], "the raw z axis is preprocessed axis 1 and the 2D box keeps one slice there"
    # 7 raw voxels of 0.9 mm (x) and 1.3 mm (y) span 6.3 / 9.1 mm: 4.2 voxels at 1.5 mm, 9.1 at 1.0 mm,
    # so 4-5 and 9-10 preprocessed voxel centres fall inside
    assert 4 <= hi[0] - lo[0] + 1 <= 5 and 9 <= hi[2] - lo[2] + 1 <= 10

    mask = np.zeros(SIZE[::-1], bool)
    mask[z, y - 1:y + 2, x - 1:x + 2] = True
    m = grid.mask_to_preprocessed(mask, cm, props["spacing"])
    assert m.shape == data.shape
    assert m[tuple(c)]
    mc = np.argwhere(m).mean(0)
    np.testing.assert_allclose(mc, _marker_centroid(data), atol=0.75)


def test_world_index_round_trip_with_direction():
    g = ImageGeometry(SIZE, SPACING, ORIGIN, DIRECTION)
    for idx in [(0, 0, 0), (3.5, 7.25, 2.0), (29, 25, 13)]:
        np.testing.assert_allclose(g.world_to_index(g.index_to_world(idx)), idx, atol=1e-9)
    # direction column 0 is +y: moving one voxel in x moves 0.9 mm along world y
    d = g.index_to_world((1, 0, 0)) - g.index_to_world((0, 0, 0))
    np.testing.assert_allclose(d, [0.0, 0.9, 0.0], atol=1e-9)

"""The prompt model: parsing, validation messages, coordinates, JSON round trip."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_prompt.prompts.geometry import ImageGeometry
from nnunet_prompt.prompts.model import (Prompt, PromptError, foreground_labels, load_prompts_file, parse_prompts,
                                         save_prompts_file)

# anisotropic spacing, non-zero origin, a rotation about z (non-identity direction)
GEOM = ImageGeometry(size=(30, 26, 14), spacing=(0.9, 1.3, 3.1), origin=(12.5, -40.2, 88.0),
                     direction=(0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def test_voxel_and_mm_give_the_same_voxel():
    idx = (7.0, 11.0, 5.0)
    world = GEOM.index_to_world(idx)
    # the rotation swaps the roles of x and y: a naive origin + index * spacing would be wrong
    assert not np.allclose(world, np.asarray(GEOM.origin) + np.asarray(idx) * np.asarray(GEOM.spacing))
    pv = Prompt.from_dict({"positive_points": [list(idx)]}).to_voxel(GEOM)
    pm = Prompt.from_dict({"coordinates": "mm", "positive_points": [world.tolist()]}).to_voxel(GEOM)
    np.testing.assert_allclose(pv.positive_points[0], idx)
    np.testing.assert_allclose(pm.positive_points[0], idx, atol=1e-6)


def test_mm_box_corners_are_reordered_after_a_flipping_direction():
    lo_w, hi_w = GEOM.index_to_world((2, 3, 1)), GEOM.index_to_world((9, 8, 4))
    vp = Prompt.from_dict({"coordinates": "mm", "boxes": [{"min": lo_w.tolist(), "max": hi_w.tolist()}]}).to_voxel(GEOM)
    assert vp.boxes[0].min == (2, 3, 1) and vp.boxes[0].max == (9, 8, 4)


def test_2d_box_is_one_flat_axis():
    vp = Prompt.from_dict({"boxes": [{"min": [2, 3, 5], "max": [9, 8, 5]}]}).to_voxel(GEOM)
    assert vp.boxes[0].flat_axes == (2,)


@pytest.mark.parametrize("prompt, message", [
    ({"positive_points": [[30, 1, 1]]}, "outside the image"),
    ({"negative_points": [[-1, 1, 1]]}, "outside the image"),
    ({"boxes": [{"min": [5, 5, 5], "max": [4, 8, 8]}]}, "Inverted box"),
    ({"boxes": [{"min": [5, 5, 5], "max": [5, 5, 8]}]}, "Empty box"),
    ({"boxes": [{"min": [0, 0, 0], "max": [5, 5, 20]}]}, "outside the image"),
])
def test_geometric_errors_name_the_case_and_file(prompt, message):
    p = Prompt.from_dict(prompt)
    with pytest.raises(PromptError, match=message) as e:
        p.to_voxel(GEOM, case="case_7", source="prompts.json")
    assert "case_7" in str(e.value) and "prompts.json" in str(e.value)


@pytest.mark.parametrize("prompt, message", [
    ({"positive_point": [[1, 2, 3]]}, "Unknown prompt key"),
    ({"positive_points": [[1, 2]]}, "3 numbers"),
    ({"positive_points": [["a", 2, 3]]}, "numbers"),
    ({"positive_points": [[True, 2, 3]]}, "numbers"),
    ({"positive_points": (1, 2, 3)}, "list"),
    ({"boxes": [{"min": [1, 2, 3]}]}, "'min' and 'max'"),
    ({"coordinates": "ras", "positive_points": [[1, 2, 3]]}, "coordinates"),
    ({"label": 1.5, "positive_points": [[1, 2, 3]]}, "label"),
    ({"text": 5}, "text"),
    ({"mask": 3}, "mask"),
    ({}, "empty"),
    ([1, 2, 3], "JSON object"),
])
def test_structural_errors(prompt, message):
    with pytest.raises(PromptError, match=message):
        Prompt.from_dict(prompt, case="c1", source="f.json")


def test_mask_on_another_grid_is_refused(tmp_path):
    img = sitk.Image(list(GEOM.size), sitk.sitkUInt8)
    img.SetSpacing(GEOM.spacing)
    img.SetOrigin(GEOM.origin)  # direction left at identity: another grid
    sitk.WriteImage(img, str(tmp_path / "m.nii.gz"))
    p = Prompt.from_dict({"mask": "m.nii.gz"}, base_dir=str(tmp_path))
    with pytest.raises(PromptError, match="direction"):
        p.to_voxel(GEOM, case="c1")
    img.SetDirection(GEOM.direction)
    arr = np.zeros(GEOM.size[::-1], np.uint8)
    arr[3, 4, 5] = 1
    good = sitk.GetImageFromArray(arr)
    good.CopyInformation(img)
    sitk.WriteImage(good, str(tmp_path / "m.nii.gz"))
    vp = p.to_voxel(GEOM)
    assert vp.mask.shape == GEOM.size[::-1] and vp.mask[3, 4, 5] and vp.mask.sum() == 1


def test_labels_by_name_or_value_and_unknown_labels():
    labels = {"GTVp": 1, "GTVn": 2}
    assert Prompt(label="GTVn", positive_points=[(1, 1, 1)]).resolve_label(labels) == 2
    assert Prompt(label=1, positive_points=[(1, 1, 1)]).resolve_label(labels) == 1
    with pytest.raises(PromptError, match="Unknown label name 'CTV'"):
        Prompt(label="CTV", positive_points=[(1, 1, 1)]).resolve_label(labels, case="c")
    with pytest.raises(PromptError, match="Unknown label value 3"):
        Prompt(label=3, positive_points=[(1, 1, 1)]).resolve_label(labels)
    with pytest.raises(PromptError, match="several foreground labels"):
        Prompt(positive_points=[(1, 1, 1)]).resolve_label(labels)
    assert Prompt(positive_points=[(1, 1, 1)]).resolve_label({"tumour": 1}) == 1
    assert foreground_labels({"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}}) == {"a": 1, "b": 2}
    with pytest.raises(PromptError, match="Region-based"):
        foreground_labels({"labels": {"background": 0, "whole": [1, 2]}})


def test_json_file_round_trip_and_malformed_files(tmp_path):
    data = {"case_1": {"label": "tumour", "coordinates": "mm", "positive_points": [[1.5, 2, 3]],
                       "boxes": [{"min": [0, 0, 0], "max": [4, 4, 4]}], "text": "Left-sided tumour"},
            "case_2": [{"label": 1, "negative_points": [[1, 1, 1]]}, {"label": 2, "positive_points": [[2, 2, 2]]}]}
    f = tmp_path / "prompts.json"
    f.write_text(json.dumps(data))
    prompts = load_prompts_file(str(f))
    assert len(prompts["case_2"]) == 2 and prompts["case_1"][0].text == "Left-sided tumour"
    out = tmp_path / "again.json"
    save_prompts_file(prompts, str(out))
    assert parse_prompts(json.loads(out.read_text())) == prompts

    bad = tmp_path / "bad.json"
    bad.write_text("{\"case_1\": {\"positive_points\": [[1, 2, 3]]")
    with pytest.raises(PromptError, match="not valid JSON") as e:
        load_prompts_file(str(bad))
    assert "bad.json" in str(e.value)
    with pytest.raises(PromptError, match="does not exist"):
        load_prompts_file(str(tmp_path / "missing.json"))
    bad.write_text(json.dumps(["not", "a", "mapping"]))
    with pytest.raises(PromptError, match="mapping case identifiers"):
        load_prompts_file(str(bad))

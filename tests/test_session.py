"""The interactive session: one preprocessing per image, patch-sized regions, growth, undo, reset, geometry."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_prompt.inference.session import InteractiveSession
from nnunet_prompt.prompts.regions import grown_region, region_around


def test_region_around_is_patch_sized_and_inside():
    assert region_around((5, 40, 50), (16, 32, 32), (20, 64, 64)) == ((0, 24, 32), (16, 56, 64))
    assert region_around((5, 5, 5), (16, 32, 32), (10, 20, 64)) == ((0, 0, 0), (10, 20, 32))


def test_region_grows_only_where_the_object_touches_an_inner_border():
    obj = np.zeros((16, 32, 32), bool)
    obj[5:8, 10:20, 25:32] = True            # touches the high-x face
    assert grown_region(((0, 10, 10), (16, 42, 42)), obj, (16, 32, 32), (16, 64, 64)) == ((0, 10, 10), (16, 42, 58))
    # the same object at the image border does not grow the region
    assert grown_region(((0, 10, 32), (16, 42, 64)), obj, (16, 32, 32), (16, 64, 64)) is None
    assert grown_region(((0, 10, 10), (16, 42, 42)), np.zeros_like(obj), (16, 32, 32), (16, 64, 64)) is None


@pytest.fixture(scope="module")
def session_case(trained):
    raw = trained["raw"]
    case = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))[0]
    image = os.path.join(raw, "imagesTs", case + "_0000.nii.gz")
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "labelsTs", case + ".nii.gz")))
    return image, label


def test_session_interactions(trained, session_case):
    image, label = session_case
    s = InteractiveSession(trained["folder"], fold=0, device="cpu")
    s.set_image(image)
    z, y, x = np.argwhere(label > 0).mean(0).round().astype(int)
    m1 = s.add_point((x, y, z), positive=True)
    assert m1.shape == label.shape and m1.dtype == np.uint8
    assert s.last_latency_ms > 0
    lo, hi = s.last_region
    click = s._grid.raw_to_preprocessed((x, y, z))
    assert all(l <= c < h for l, c, h in zip(lo, click, hi)), "the region is around the click"
    assert all(min(p, n) <= h - l <= n for l, h, p, n in zip(lo, hi, s.patch, s._grid.shape))
    zz, yy, xx = np.nonzero(label)
    m2 = s.add_box((xx.min(), yy.min(), zz.min()), (xx.max(), yy.max(), zz.max()))
    s.add_point((x + 1, y, z), positive=False)
    assert s.num_preprocessing_runs == 1, "the image is preprocessed once, not per interaction"
    assert np.array_equal(s.undo(), m2)
    assert np.array_equal(s.undo(), m1)
    s.reset()
    assert s.mask.sum() == 0
    with pytest.raises(IndexError):
        s.undo()
    from nnunet_prompt.prompts.model import PromptError
    with pytest.raises(PromptError, match="outside the image"):
        s.add_point((10_000, 0, 0))


def test_session_array_input_matches_file_input(trained, session_case):
    image, label = session_case
    img = sitk.ReadImage(image)
    z, y, x = np.argwhere(label > 0).mean(0).round().astype(int)
    a = InteractiveSession(trained["folder"], device="cpu")
    a.set_image(image)
    b = InteractiveSession(trained["folder"], device="cpu")
    b.set_image(sitk.GetArrayFromImage(img), spacing=img.GetSpacing(), origin=img.GetOrigin(),
                direction=img.GetDirection())
    world = img.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
    np.testing.assert_array_equal(a.add_point((x, y, z)), b.add_point(world, coordinates="mm"))
    # a mask prompt becomes the previous result; undo restores the state before it
    before = b.mask
    b.add_mask(label > 0)
    np.testing.assert_array_equal(b.undo(), before)
    # without growth the region stays the patch-sized one around the interaction, whatever the prediction
    c = InteractiveSession(trained["folder"], device="cpu", max_growth=0)
    c.set_image(image)
    c.add_box((0, 0, 0), tuple(int(v) - 1 for v in img.GetSize()))  # a box over everything
    center = (np.asarray(c._grid.shape) - 1) / 2
    assert c.last_region == region_around(center, c.patch, c._grid.shape)
    with pytest.raises(ValueError, match="image channel"):
        b.set_image(np.zeros((2, 4, 4, 4), np.float32), spacing=(1, 1, 1))


def test_n_click_protocol_command(trained, tmp_path):
    import json
    from conftest import CONFIG, PLANS, TRAINER, console_script, run
    out = tmp_path / "ncl"
    proc = run([console_script("nnunet-prompt"), "interactive-eval", "-d", str(trained["id"]), "-c", CONFIG, "-f", "0",
                "-tr", TRAINER, "-p", PLANS, "--clicks", "1", "3", "--test-set", "-o", str(out), "-device", "cpu"],
               trained["env"])
    assert proc.returncode == 0, proc.stdout[-4000:]
    summary = json.load(open(out / "interactive_eval.json"))
    assert set(summary["mean"][TRAINER]) == {"clicks", "box"}
    assert set(summary["mean"][TRAINER]["clicks"]) == {"1", "3"}
    rows = (out / "interactive_eval.csv").read_text().splitlines()
    assert rows[0] == "trainer,case,label,start,n,Dice,NSD,latency_ms" and len(rows) == 1 + 2 * 2 * 2
    assert (out / "interactive_eval.png").stat().st_size > 1000


def test_refinement_clicks_follow_the_error(trained, session_case):
    """The protocol's later clicks are placed in the current error, with the right sign."""
    from nnunet_prompt.evaluation.interactive_eval import run_protocol
    image, label = session_case
    s = InteractiveSession(trained["folder"], device="cpu")
    s.set_image(image)
    placed = []
    original = s.add_point

    def spy(point, positive=True, coordinates="voxel"):
        before = s.mask if s._history else np.zeros_like(label)
        x, y, z = point
        placed.append((positive, bool(label[z, y, x] > 0), bool(before[z, y, x] > 0)))
        return original(point, positive, coordinates)

    s.add_point = spy
    rows = run_protocol(s, label, 1, "clicks", [1, 2, 3], sitk.ReadImage(image).GetSpacing()[::-1], 2.0, seed=3)
    assert [r["n"] for r in rows] == [1, 2, 3]
    assert placed[0][0] and placed[0][1], "the first click is a positive click in the target"
    for positive, in_target, predicted in placed[1:]:
        # a positive click lands on a missed target voxel, a negative one on a false positive
        assert (positive and in_target and not predicted) or (not positive and predicted and not in_target)

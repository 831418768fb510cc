"""Metrics: known answers on spheres with anisotropic spacing, the empty-mask policy, agreement with
nnU-Net's own Dice/IoU, and `nnunet-prompt evaluate` end to end."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_prompt.evaluation.evaluate_folder import EvaluationError, evaluate_folders
from nnunet_prompt.evaluation.metrics import binary_metrics

SPACING = (2.0, 0.8, 0.8)  # z, y, x in mm


def sphere(radius_mm, shape=(40, 100, 100), spacing=SPACING, center_mm=None):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    c = center_mm or [n * s / 2 for n, s in zip(shape, spacing)]
    return sum((g - ci) ** 2 for g, ci in zip(grids, c)) <= radius_mm ** 2


def test_concentric_spheres_known_answers():
    ref, pred = sphere(20.0), sphere(24.0)
    m = binary_metrics(pred, ref, SPACING, nsd_tolerance_mm=2.0)
    # every boundary point of one sphere is 4 mm from the other: HD95 and ASSD are 4 mm up to voxelisation
    assert m["HD95"] == pytest.approx(4.0, abs=1.0)
    assert m["ASSD"] == pytest.approx(4.0, abs=0.8)
    # volumes: Dice = 2 * 20^3 / (20^3 + 24^3)
    assert m["Dice"] == pytest.approx(2 * 20 ** 3 / (20 ** 3 + 24 ** 3), abs=0.02)
    assert m["IoU"] == pytest.approx(20 ** 3 / 24 ** 3, abs=0.02)
    # a 2 mm tolerance does not reach across a 4 mm gap; 6 mm does
    assert m["NSD"] < 0.1
    assert binary_metrics(pred, ref, SPACING, nsd_tolerance_mm=6.0)["NSD"] > 0.99


def test_spacing_is_used_per_axis():
    ref = sphere(20.0)
    shifted = sphere(20.0, center_mm=[40.0 + 6.0, 40.0, 40.0])  # shifted 6 mm = 3 voxels along the 2 mm axis
    m = binary_metrics(shifted, ref, SPACING, 2.0)
    assert m["HD95"] == pytest.approx(6.0, abs=1.0)
    m_wrong = binary_metrics(shifted, ref, SPACING[::-1], 2.0)
    assert m_wrong["HD95"] < 4.0, "with the spacing reversed the same shift measures 3 x 0.8 mm"


def test_empty_mask_policy():
    ref = sphere(10.0, shape=(20, 40, 40))
    empty = np.zeros_like(ref)
    both = binary_metrics(empty, empty, SPACING, 2.0)
    assert all(np.isnan(both[k]) for k in ("Dice", "IoU", "HD95", "ASSD", "NSD"))
    miss = binary_metrics(empty, ref, SPACING, 2.0)
    diag = float(np.linalg.norm(np.asarray(ref.shape) * np.asarray(SPACING)))
    assert miss["Dice"] == 0 and miss["NSD"] == 0 and miss["HD95"] == pytest.approx(diag)


def test_agrees_with_monai_called_directly():
    # our wrapper must hand MONAI the masks and the spacing in the same axis order
    import torch
    from monai.metrics import compute_hausdorff_distance
    ref = sphere(12.0, shape=(30, 60, 60))
    pred = sphere(12.0, shape=(30, 60, 60), center_mm=[30.0, 26.0, 22.0])
    ours = binary_metrics(pred, ref, SPACING, 2.0)["HD95"]
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
    direct = float(compute_hausdorff_distance(one_hot(pred), one_hot(ref), percentile=95, spacing=list(SPACING))[0, 0])
    assert ours == pytest.approx(direct)


def _write(arr, path, spacing=SPACING):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sitk.WriteImage(img, str(path))


def test_evaluate_folder_matches_nnunet_dice_and_iou(tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    gt, pr = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pr.mkdir()
    rng = np.random.default_rng(0)
    shape = (20, 40, 40)
    for i in range(3):
        ref = np.zeros(shape, np.uint8)
        ref[sphere(8.0 + i, shape=shape)] = 1
        ref[sphere(5.0, shape=shape, center_mm=[20.0, 8.0, 8.0])] = 2
        pred = ref.copy()
        pred[sphere(9.0 + i, shape=shape, center_mm=[21.0, 17.0, 15.0])] = 1
        pred[rng.random(shape) < 0.002] = 2
        _write(ref, gt / f"c{i}.nii.gz")
        _write(pred, pr / f"c{i}.nii.gz")
    dj = {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz"}
    ours = evaluate_folders(str(gt), str(pr), dj, 2.0, str(tmp_path / "m.json"))
    theirs = compute_metrics_on_folder(str(gt), str(pr), str(tmp_path / "nnunet.json"), SimpleITKIO(), ".nii.gz",
                                       [1, 2], None, num_processes=1)
    for c_ours, c_theirs in zip(ours["metric_per_case"], theirs["metric_per_case"]):
        for name, label in (("a", 1), ("b", 2)):
            assert c_ours["metrics"][name]["Dice"] == pytest.approx(c_theirs["metrics"][label]["Dice"], abs=1e-12)
            assert c_ours["metrics"][name]["IoU"] == pytest.approx(c_theirs["metrics"][label]["IoU"], abs=1e-12)
    saved = json.load(open(tmp_path / "m.json"))
    assert "HD95" in saved["definitions"] and "empty" in saved["definitions"]["empty_masks"]
    assert (tmp_path / "m.csv").read_text().startswith("case,target,Dice,IoU,HD95,ASSD,NSD")

    # the command line writes the same results and prints the definitions
    from nnunet_prompt.cli import main
    (tmp_path / "dataset.json").write_text(json.dumps(dj))
    main(["evaluate", str(gt), str(pr), "-djfile", str(tmp_path / "dataset.json"), "-o", str(tmp_path / "cli.json")])
    assert json.load(open(tmp_path / "cli.json"))["mean"] == saved["mean"]

    os.remove(pr / "c1.nii.gz")
    with pytest.raises(EvaluationError, match="lacks 1 case"):
        evaluate_folders(str(gt), str(pr), dj, 2.0, str(tmp_path / "m2.json"))
    assert not (tmp_path / "m2.json").exists()

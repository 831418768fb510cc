"""interactive-eval beyond the N-click basics: labelled folders with a label mapping, per-label and pooled means,
click placement in millimetres, and the CVPR 2025 challenge protocol (box, then 5 clicks, AUC)."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_prompt.evaluation.evaluate_folder import EvaluationError
from nnunet_prompt.evaluation.interactive_eval import (CVPR25_STEPS, auc, cvpr25_summary, parse_label_map, summarise,
                                                       write_outputs)
from nnunet_prompt.interaction.user_prompts import next_click_mm


def _two_lobes():
    """One error region on a (4, 1, 1) mm grid: lobe A is thick in voxels along z but only 7 mm wide in x,
    lobe B is 3 slices (12 mm) thick and 21 mm wide: deepest by chessboard voxels in A, by millimetres in B."""
    region = np.zeros((16, 40, 40), bool)
    region[2:11, 5:12, 5:12] = True     # A: 9 slices x 7 x 7 voxels
    region[5:8, 12:33, 5:26] = True     # B: 3 slices x 21 x 21 voxels, face-adjacent to A
    return region, (4.0, 1.0, 1.0)


def test_next_click_is_the_millimetre_farthest_point_not_the_voxel_one():
    from scipy.ndimage import distance_transform_edt
    from nnunet_prompt.interaction.simulation import InteractionSimulator
    from nnunet_prompt.prompts.encoding import PromptEncoding
    region, spacing = _two_lobes()
    (z, y, x), positive = next_click_mm(np.zeros_like(region), region, spacing, np.random.default_rng(0))
    assert positive, "a missed region gets a positive click"
    assert 5 <= z < 8 and y >= 12, "the click lies in lobe B, deepest in mm"
    depth = distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    assert depth[z, y, x] == pytest.approx(depth.max()) and depth.max() == pytest.approx(8.0)
    # training's simulator (chessboard depth in voxels) chooses lobe A on the same region
    coords, kind = InteractionSimulator(PromptEncoding(), spacing, seed=0).next_clicks(
        torch.zeros((1, *region.shape), dtype=torch.bool), torch.from_numpy(region)[None])
    assert int(kind[0]) == 1 and int(coords[0, 1]) < 12, "the voxel rule picks lobe A"
    # a false positive gets a negative click; no error, no click
    (_, y, _), positive = next_click_mm(region, np.zeros_like(region), spacing, np.random.default_rng(0))
    assert not positive and y >= 12
    assert next_click_mm(region, region, spacing, np.random.default_rng(0)) is None


def _rows(values):
    """Protocol rows: {(case, label): [Dice per N]} (NSD = Dice / 2)."""
    return [{"trainer": "T", "case": c, "label": lab, "start": "cvpr25", "n": n + 1, "Dice": d, "NSD": d / 2}
            for (c, lab), ds in values.items() for n, d in enumerate(ds)]


def test_pooled_is_the_mean_over_targets_and_auc_the_normalised_trapezoid():
    values = {("a", "tumour"): [0.2, 0.4, 0.5, 0.6, 0.7, 0.8], ("b", "tumour"): [0.4, 0.4, 0.6, 0.6, 0.8, 0.8],
              ("a", "node"): [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]}
    rows = _rows(values)
    s = summarise(rows)
    # pooled over the 3 targets, not the mean of the 2 label means
    assert s["mean"]["T"]["cvpr25"][1] == {"Dice": pytest.approx(0.2), "NSD": pytest.approx(0.1), "targets": 3}
    assert s["per_label"]["T"]["cvpr25"]["tumour"][1]["Dice"] == pytest.approx(0.3)
    assert s["per_label"]["T"]["cvpr25"]["node"][6] == {"Dice": pytest.approx(1.0), "NSD": pytest.approx(0.5),
                                                        "targets": 1}
    assert auc([1.0] * 6) == 1.0 and auc([0.0] * 6) == 0.0
    assert auc([0, 1, 1, 1, 1, 1]) == pytest.approx(0.9)  # (0.5 + 4) / 5
    c = cvpr25_summary(rows)["T"]
    assert c["node"]["DSC_AUC"] == pytest.approx(np.trapezoid(values[("a", "node")]) / 5)
    assert c["pooled"]["DSC_AUC"] == pytest.approx(np.mean([np.trapezoid(v) / 5 for v in values.values()]))
    assert c["pooled"]["NSD_final"] == pytest.approx(np.mean([v[-1] / 2 for v in values.values()]))
    assert c["pooled"]["targets"] == 3 and c["tumour"]["targets"] == 2


def test_outputs_hold_every_label_and_the_pooled_means(tmp_path):
    values = {("a", "tumour"): [0.2, 0.4, 0.5, 0.6, 0.7, 0.8], ("a", "node"): [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]}
    rows = _rows(values)
    report = {"nsd_tolerance_mm": 2.0, **summarise(rows), "cvpr25": cvpr25_summary(rows)}
    write_outputs(rows, report, str(tmp_path))
    md = (tmp_path / "interactive_eval.md").read_text()
    for target in ("pooled", "tumour", "node"):
        assert f"| T | cvpr25 | {target} | 6 |" in md and f"| T | cvpr25 | {target} | AUC |" in md
    assert len(list(csv.DictReader(open(tmp_path / "interactive_eval_summary.csv")))) == 3 * (len(CVPR25_STEPS) + 1)
    assert (tmp_path / "interactive_eval.png").stat().st_size > 1000


def test_label_map_items_and_json_file(tmp_path):
    dj = {"labels": {"background": 0, "GTVp": 1, "GTVn": 2}}
    assert parse_label_map(["3=GTVp", "5=2", "7=0", "8=GTVp"], dj) == {3: 1, 5: 2, 7: 0, 8: 1, 0: 0}
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"3": "GTVn", "0": 0}))
    assert parse_label_map([str(path)], dj) == {3: 2, 0: 0}
    for items, message in ((["3=GTVp", "3=GTVn"], "twice"), (["x=GTVp"], "not a label value of the folder"),
                           (["3=GTVx"], "neither a label name nor a label value"), (["3=9"], "neither")):
        with pytest.raises(EvaluationError, match=message):
            parse_label_map(items, dj)


def _renamed_copy(raw, folder):
    """imagesTs/labelsTs copied to ``folder`` with the tumour relabelled 3 and a corner voxel labelled 5 (a
    structure the model does not know)."""
    images, labels = folder / "images", folder / "labels"
    shutil.copytree(os.path.join(raw, "imagesTs"), images)
    labels.mkdir()
    for f in sorted(os.listdir(os.path.join(raw, "labelsTs"))):
        img = sitk.ReadImage(os.path.join(raw, "labelsTs", f))
        a = sitk.GetArrayFromImage(img)
        assert a[0, 0, 0] == 0
        a = np.where(a == 1, 3, a).astype(a.dtype)
        a[0, 0, 0] = 5
        out = sitk.GetImageFromArray(a)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(labels / f))
    return images, labels


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_labelled_folder_with_label_map_and_cvpr25_protocol(trained, tmp_path):
    from conftest import CONFIG, PLANS, TRAINER, console_script, run
    base = [console_script("nnunet-prompt"), "interactive-eval", "-d", str(trained["id"]), "-c", CONFIG, "-f", "0",
            "-tr", TRAINER, "-p", PLANS, "--protocol", "cvpr25", "-device", "cpu"]
    own, mapped = tmp_path / "own", tmp_path / "mapped"
    proc = run(base + ["--test-set", "-o", str(own)], trained["env"])
    assert proc.returncode == 0, proc.stdout[-4000:]
    images, labels = _renamed_copy(trained["raw"], tmp_path)
    proc = run(base + ["-i", str(images), "-l", str(labels), "--label-map", "3=tumour", "5=0", "-o", str(mapped)],
               trained["env"])
    assert proc.returncode == 0, proc.stdout[-4000:]
    # the same targets, the same clicks, the same Dice and NSD as on the dataset's own labelsTs
    a, b = _read_csv(own / "interactive_eval.csv"), _read_csv(mapped / "interactive_eval.csv")
    assert len(a) == 2 * 6 and [(r["case"], r["label"], r["n"], r["Dice"], r["NSD"]) for r in a] == \
        [(r["case"], r["label"], r["n"], r["Dice"], r["NSD"]) for r in b]
    report = json.load(open(mapped / "interactive_eval.json"))
    assert report["label_map"] == {"3": 1, "5": 0, "0": 0}
    pooled = report["mean"][TRAINER]["cvpr25"]
    assert list(pooled) == [str(n) for n in range(1, 7)], "box + 5 clicks: 6 steps"
    for n, v in pooled.items():  # pooled = mean over the targets' rows
        assert v["Dice"] == pytest.approx(np.mean([float(r["Dice"]) for r in b if r["n"] == n]))
        assert v["targets"] == 2
    assert report["per_label"][TRAINER]["cvpr25"]["tumour"] == pooled  # one label: its mean is the pooled one
    c = report["cvpr25"][TRAINER]["pooled"]
    dice, nsd = [pooled[n]["Dice"] for n in pooled], [pooled[n]["NSD"] for n in pooled]
    assert c["DSC_AUC"] == pytest.approx(np.trapezoid(dice) / 5) and c["NSD_AUC"] == pytest.approx(np.trapezoid(nsd) / 5)
    assert c["DSC_final"] == pytest.approx(dice[-1]) and c["NSD_final"] == pytest.approx(nsd[-1])
    table = _read_csv(mapped / "interactive_eval_summary.csv")
    assert {(r["target"], r["n"]) for r in table} == {(t, n) for t in ("pooled", "tumour")
                                                      for n in [*map(str, range(1, 7)), "AUC"]}
    assert "| pooled | AUC |" in (mapped / "interactive_eval.md").read_text()
    assert (mapped / "interactive_eval.png").stat().st_size > 1000

"""`nnunet-prompt compare`: the report, and refusal of unfair comparisons."""
import json
import os
import shutil

import pytest
import SimpleITK as sitk

from conftest import CONFIG, PLANS, TRAINER, console_script, run


@pytest.fixture(scope="module")
def baseline(trained):
    env = dict(trained["env"], NNUNET_PROMPT_DEMO_EPOCHS="1", NNUNET_PROMPT_DEMO_ITERS="3")
    proc = run([console_script("nnUNetv2_train"), str(trained["id"]), CONFIG, "0", "-tr", "nnUNetTrainer_demo", "-p",
                PLANS, "-device", "cpu"], env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return os.path.join(env["nnUNet_results"], trained["name"], f"nnUNetTrainer_demo__{PLANS}__{CONFIG}")


def test_compare_writes_a_report(trained, baseline, tmp_path):
    out = tmp_path / "cmp"
    proc = run([console_script("nnunet-prompt"), "compare", "-d", str(trained["id"]), "-c", CONFIG, "--baseline",
                "nnUNetTrainer_demo", "--trainers", TRAINER, "-p", PLANS, "-f", "0", "-o", str(out)], trained["env"])
    assert proc.returncode == 0, proc.stdout[-4000:]
    report = json.load(open(out / "compare.json"))
    stats = report["targets"]["tumour"]
    assert set(stats) == {"nnUNetTrainer_demo", TRAINER}
    assert "wilcoxon_p" in stats[TRAINER]["Dice"] and "wilcoxon_p" not in stats["nnUNetTrainer_demo"]["Dice"]
    assert {"ttest_p", "difference_ci95", "mean_difference"} <= set(stats[TRAINER]["Dice"])
    val = os.path.join(baseline, "fold_0", "validation")
    n_val = len([f for f in os.listdir(val) if f.endswith(".nii.gz")])
    assert n_val >= 1 and stats[TRAINER]["Dice"]["n"] == stats["nnUNetTrainer_demo"]["HD95"]["n"] == n_val
    assert (out / "compare_boxplots.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "Wilcoxon" in md and "± " in md and "median" in md


def _fake_model(trained, baseline, name):
    folder = os.path.join(trained["env"]["nnUNet_results"], trained["name"], f"{name}__{PLANS}__{CONFIG}")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    shutil.copytree(baseline, folder)
    return folder


def test_compare_refuses_other_plans_and_other_splits(trained, baseline, tmp_path):
    from nnunet_prompt.evaluation.compare import compare
    from nnunet_prompt.evaluation.evaluate_folder import EvaluationError
    other_plans = _fake_model(trained, baseline, "OtherPlans")
    p = json.load(open(os.path.join(other_plans, "plans.json")))
    p["configurations"][CONFIG]["patch_size"] = [8, 8, 8]
    json.dump(p, open(os.path.join(other_plans, "plans.json"), "w"))
    with pytest.raises(EvaluationError, match="other plans"):
        compare(trained["name"], CONFIG, "nnUNetTrainer_demo", ["OtherPlans"], PLANS, [0], str(tmp_path / "a"))

    other_split = _fake_model(trained, baseline, "OtherSplit")
    val = os.path.join(other_split, "fold_0", "validation")
    os.remove(os.path.join(val, sorted(f for f in os.listdir(val) if f.endswith(".nii.gz"))[0]))
    with pytest.raises(EvaluationError, match="different splits"):
        compare(trained["name"], CONFIG, "nnUNetTrainer_demo", ["OtherSplit"], PLANS, [0], str(tmp_path / "b"))

    other_labels = _fake_model(trained, baseline, "OtherLabels")
    dj = json.load(open(os.path.join(other_labels, "dataset.json")))
    dj["labels"]["extra"] = 2
    json.dump(dj, open(os.path.join(other_labels, "dataset.json"), "w"))
    with pytest.raises(EvaluationError, match="label sets"):
        compare(trained["name"], CONFIG, "nnUNetTrainer_demo", ["OtherLabels"], PLANS, [0], str(tmp_path / "c"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_compare_pairs_a_2d_model_with_a_3d_one(trained, baseline, tmp_path):
    """nnU-Net's folder name TRAINER__PLANS__CONFIGURATION names a model of another configuration: paired on the same
    cases, listed with its own setup (the same plans name with other content stays refused: test above)."""
    from nnunet_prompt.evaluation.compare import compare
    plans = json.load(open(os.path.join(baseline, "plans.json")))
    assert "2d" in plans["configurations"]
    folder = os.path.join(trained["env"]["nnUNet_results"], trained["name"], f"Other2D__{PLANS}__2d")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    shutil.copytree(baseline, folder)  # its validation predictions stand in for a 2d model's
    report = compare(trained["name"], CONFIG, "nnUNetTrainer_demo", [f"Other2D__{PLANS}__2d", TRAINER], PLANS, [0],
                     str(tmp_path / "c"))
    setup = report["setup"][f"Other2D__{PLANS}__2d"]
    assert setup["configuration"] == "2d" and setup["patch_size"] == plans["configurations"]["2d"]["patch_size"]
    dice = report["targets"]["tumour"][f"Other2D__{PLANS}__2d"]["Dice"]
    assert dice["mean_difference"] == 0.0 and dice["ttest_p"] is None  # the same predictions: nothing to test
    md = (tmp_path / "c" / "report.md").read_text()
    assert "| 2d |" in md and f"| {CONFIG} |" in md


def test_compare_test_predictions_with_timing_bootstrap_and_t_test(trained, baseline, tmp_path):
    import numpy as np
    from test_end_to_end import _prompts_for
    from nnunet_prompt.evaluation.evaluate_folder import evaluate_folders
    raw, env = trained["raw"], trained["env"]
    cases = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(_prompts_for(raw, cases)))
    plain, prompted = tmp_path / "plain", tmp_path / "prompted"
    proc = run([console_script("nnUNetv2_predict"), "-i", os.path.join(raw, "imagesTs"), "-o", str(plain), "-d",
                str(trained["id"]), "-c", CONFIG, "-f", "0", "-tr", "nnUNetTrainer_demo", "-p", PLANS, "-device", "cpu",
                "-npp", "1", "-nps", "1", "--disable_tta"], env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    proc = run([console_script("nnunet-prompt"), "predict", "-i", os.path.join(raw, "imagesTs"), "-o", str(prompted),
                "-d", str(trained["id"]), "-c", CONFIG, "-f", "0", "-tr", TRAINER, "-p", PLANS, "--prompts",
                str(prompts), "-device", "cpu", "--disable_tta"], env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    timing = json.load(open(prompted / "timing.json"))
    given = json.load(open(prompts))
    assert sorted(timing["cases"]) == cases
    for c in cases:
        entries = given[c] if isinstance(given[c], list) else [given[c]]
        size = sitk.ReadImage(os.path.join(raw, "imagesTs", c + "_0000.nii.gz")).GetSize()
        assert timing["cases"][c]["seconds"] > 0 and timing["cases"][c]["slices"] in size
        assert timing["cases"][c]["boxes"] == sum(len(e.get("boxes", [])) for e in entries)

    out = tmp_path / "cmp"
    proc = run([console_script("nnunet-prompt"), "compare", "-d", str(trained["id"]), "-l",
                os.path.join(raw, "labelsTs"), "--predictions", f"nnunet={plain}", f"prompted={prompted}", "-o",
                str(out)], env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    report = json.load(open(out / "compare.json"))
    assert report["baseline"] == "nnunet" and report["models"] == ["prompted"]
    assert report["timing"]["nnunet"] is None and report["timing"]["prompted"]["n"] == len(cases)
    assert report["timing"]["prompted"]["seconds_per_slice"] < report["timing"]["prompted"]["seconds_per_case"]
    dice = report["targets"]["tumour"]["prompted"]["Dice"]
    assert dice["n_paired"] == len(cases)
    # the mean paired difference is that of the two models' per-case Dice, recomputed from evaluate's output
    dj = json.load(open(os.path.join(raw, "dataset.json")))
    per = {name: {c["case"]: c["metrics"]["tumour"]["Dice"] for c in
                  evaluate_folders(os.path.join(raw, "labelsTs"), str(folder), dj)["metric_per_case"]}
           for name, folder in (("a", plain), ("b", prompted))}
    diffs = np.array([per["b"][c] - per["a"][c] for c in cases])
    assert np.isclose(dice["mean_difference"], diffs.mean())
    if dice["difference_ci95"] is not None:
        lo, hi = dice["difference_ci95"]
        assert lo <= diffs.mean() <= hi and dice["ttest_p"] is not None
    md = (out / "report.md").read_text()
    assert "s per slice" in md and "no timing.json" in md

    # a model that predicted other cases is refused, naming what differs
    partial = tmp_path / "partial"
    shutil.copytree(prompted, partial)
    os.remove(partial / f"{cases[0]}.nii.gz")
    proc = run([console_script("nnunet-prompt"), "compare", "-d", str(trained["id"]), "-l",
                os.path.join(raw, "labelsTs"), "--predictions", f"nnunet={plain}", f"partial={partial}", "-o",
                str(tmp_path / "cmp2")], env)
    assert proc.returncode != 0 and "different cases" in proc.stdout and cases[0] in proc.stdout
    assert not (tmp_path / "cmp2").exists()

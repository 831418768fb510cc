"""`nnunet-prompt compare`: the report, and refusal of unfair comparisons."""
import json
import os
import shutil

import pytest

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

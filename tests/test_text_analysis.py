"""`nnunet-prompt text-analysis` (LLMSeg's text perturbation analysis) through the real pipeline on the tiny text
phantom (conftest's text_trained model), its perturbations, its geometry, and its refusals of bad input."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CONFIG, PLANS, TEXT_TRAINER, TRAINER, console_script, run
from test_bad_input import _checksums, assert_no_output, refused


# ------------------------------------------------------------------------------------------------ perturbations
def test_laterality_swaps_whole_words_and_keeps_case():
    from nnunet_prompt.text.perturbation import swap_laterality
    assert swap_laterality("Left-sided tumour, LEFT neck; right node.") == "Right-sided tumour, RIGHT neck; left node."
    assert swap_laterality("bright leftover, bilateral") == "bright leftover, bilateral"


def test_n_stage_flips_n0_and_positive_stages_only():
    from nnunet_prompt.text.perturbation import swap_n_stage
    assert swap_n_stage("Left-sided tumour, cT2N0M0.") == "Left-sided tumour, cT2N1M0."
    assert swap_n_stage("cT1N1M0, pN2b, ypN0, T1aN3cM0") == "cT1N0M0, pN0, ypN1, T1aN0M0"
    assert swap_n_stage("NX, TNM, Node, HN0") == "NX, TNM, Node, HN0"


def test_perturbations_of_an_entry(tmp_path):
    from nnunet_prompt.prompts.model import PromptError
    from nnunet_prompt.text.perturbation import parse_perturbation
    entry = {"text": "Left-sided tumour, cT2N0M0.", "fields": {"laterality": "left", "N": "N0", "T": "T2"}}
    assert parse_perturbation("laterality").apply(entry) == {"text": "Right-sided tumour, cT2N0M0.",
                                                             "fields": {"laterality": "right", "N": "N0", "T": "T2"}}
    assert parse_perturbation("n-stage").apply(entry)["fields"]["N"] == "N1"
    dropped = parse_perturbation("drop-field:N").apply(entry)
    assert dropped["fields"] == {"laterality": "left", "T": "T2"} and dropped["text"] == entry["text"]
    assert parse_perturbation("drop-field:surgery").apply(entry) == entry
    assert entry["fields"]["N"] == "N0", "the entry itself was modified"
    custom = tmp_path / "swap.json"
    custom.write_text(json.dumps({"tumour": "mass", "cT2N0M0": "cT4N2M1"}))
    assert parse_perturbation(str(custom)).apply(entry)["text"] == "Left-sided mass, cT4N2M1."
    for bad, match in (("lateral", "Unknown perturbation 'lateral'.*laterality, n-stage, drop-field:NAME"),
                       ("drop-field:", "needs the field's name"), (str(tmp_path / "none.json"), "does not exist")):
        with pytest.raises((PromptError, ValueError), match=match):
            parse_perturbation(bad)
    custom.write_text(json.dumps({"left": 3}))
    with pytest.raises(PromptError, match="non-empty strings to strings"):
        parse_perturbation(str(custom))


# ---------------------------------------------------------------------------------------------------- geometry
def _image(direction):
    img = sitk.Image(8, 4, 2, sitk.sitkUInt8)
    img.SetSpacing((2.0, 1.0, 3.0))
    img.SetOrigin((-10.0, 5.0, 7.0))
    img.SetDirection(direction)
    return img


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, 1, 0, 0, 0, 1),
                                       (0, 1, 0, -1, 0, 0, 0, 0, 1)])
def test_patient_side_follows_the_image_direction(direction):
    """Patient left = world +x (LPS), whatever array axis runs along it: checked against ITK's own index->world."""
    from nnunet_prompt.evaluation.text_analysis import left_share, patient_left
    img = _image(direction)
    mask = np.zeros((2, 4, 8), bool)
    mask[:, :, :2] = True  # the low-x-index columns
    mask[1, 0, 7] = True
    centre_x = img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()])[0]
    expected = [img.TransformIndexToPhysicalPoint([int(x), int(y), int(z)])[0] > centre_x
                for z, y, x in np.argwhere(mask)]
    assert patient_left(mask, img).tolist() == expected
    assert left_share(mask, img) == pytest.approx(np.mean(expected))
    assert np.isnan(left_share(np.zeros_like(mask), img))


# ------------------------------------------------------------------------------------------ the real pipeline
def _cases(ds):
    return sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(ds["raw"], "imagesTs")))


def _args(ds, out, perturb, clinical=None, trainer=TEXT_TRAINER):
    return ["text-analysis", "-i", os.path.join(ds["raw"], "imagesTs"), "-l", os.path.join(ds["raw"], "labelsTs"),
            "--clinical-text", clinical or os.path.join(ds["raw"], "clinical_text.json"), "--perturb", perturb,
            "-o", str(out), "-d", str(ds["id"]), "-c", CONFIG, "-f", "0", "-tr", trainer, "-p", PLANS,
            "-device", "cpu"]


def _analyse(ds, out, perturb):
    env = {k: v for k, v in ds["env"].items() if k != "NNUNET_PROMPT_TEXT_MODEL"}  # the stored choice is used
    proc = run([console_script("nnunet-prompt"), *_args(ds, out, perturb)], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "written:" in proc.stdout
    return json.load(open(out / "text_analysis.json"))


def _recomputed(out, raw, case):
    """Per label, from the written files, independently of the package: volumes, Dice and the left share."""
    own = sitk.ReadImage(str(out / "predictions" / "own" / f"{case}.nii.gz"))
    a, b = sitk.GetArrayFromImage(own), sitk.GetArrayFromImage(
        sitk.ReadImage(str(out / "predictions" / "perturbed" / f"{case}.nii.gz")))
    r = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "labelsTs", f"{case}.nii.gz")))
    voxel_ml = np.prod(own.GetSpacing()) / 1000
    centre_x = own.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in own.GetSize()])[0]

    def dice(p, q):
        return 2 * (p & q).sum() / (p.sum() + q.sum()) if p.sum() + q.sum() else None

    def left(m):
        xs = [own.TransformIndexToPhysicalPoint([int(x), int(y), int(z)])[0] for z, y, x in np.argwhere(m)]
        return float(np.mean(np.asarray(xs) > centre_x)) if xs else None

    out_ = {}
    for name, value in (("tumour", 1), ("node", 2)):
        p, q, g = a == value, b == value, r == value
        out_[name] = {"volume_own_ml": p.sum() * voxel_ml, "volume_perturbed_ml": q.sum() * voxel_ml,
                      "volume_change_ml": (q.sum() - p.sum()) * voxel_ml, "dice_own_vs_perturbed": dice(p, q),
                      "dice_own_vs_reference": dice(p, g), "dice_perturbed_vs_reference": dice(q, g),
                      "left_share_own": left(p), "left_share_perturbed": left(q)}
    return out_, a, b


def _assert_close(reported, expected, where):
    for k, v in expected.items():
        if v is None:
            assert reported[k] is None, (where, k, reported[k])
        else:
            assert reported[k] == pytest.approx(v, abs=1e-9), (where, k, reported[k], v)


def test_laterality_analysis_through_the_real_predictor(text_trained, tmp_path):
    ds = text_trained
    out = tmp_path / "laterality"
    report = _analyse(ds, out, "laterality")
    sidecar = json.load(open(os.path.join(ds["raw"], "clinical_text.json")))["cases"]
    cases = _cases(ds)
    assert sorted(report["cases"]) == cases and report["overall"]["cases"] == len(cases)
    assert report["entry_read"] == "text" and report["perturbation"]["spec"] == "laterality"
    for c in cases:
        entry = report["cases"][c]
        assert entry["entry"] == sidecar[c]["text"] and entry["perturbed_entry"] != entry["entry"]
        assert ("Left" in entry["entry"]) == ("Right" in entry["perturbed_entry"]) and entry["input_changed"]
        expected, _, _ = _recomputed(out, ds["raw"], c)
        _assert_close(entry["labels"]["tumour"], expected["tumour"], c)
        _assert_close(entry["labels"]["node"], expected["node"], c)
    written = json.load(open(out / "clinical_text_perturbed.json"))["cases"]
    assert {c: written[c]["text"] for c in cases} == {c: report["cases"][c]["perturbed_entry"] for c in cases}
    rows = (out / "text_analysis.csv").read_text().strip().splitlines()
    assert rows[0].startswith("case,label,input_changed,volume_own_ml") and len(rows) == 1 + 2 * len(cases)
    assert (out / "text_analysis.png").stat().st_size > 1000
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_a_perturbation_that_changes_nothing_gives_identical_predictions(text_trained, tmp_path):
    """drop-field of a field no entry has: same text, so the two predictions are the same files' worth of voxels and
    their Dice is 1 wherever a label was predicted (NaN, null in JSON, where it was not)."""
    ds = text_trained
    out = tmp_path / "unchanged"
    report = _analyse(ds, out, "drop-field:no_such_field")
    assert report["overall"]["cases_with_changed_input"] == 0
    predicted_any = False
    for c in _cases(ds):
        entry = report["cases"][c]
        assert entry["entry"] == entry["perturbed_entry"] and not entry["input_changed"]
        expected, a, b = _recomputed(out, ds["raw"], c)
        assert np.array_equal(a, b)
        for name in ("tumour", "node"):
            v = entry["labels"][name]
            _assert_close(v, expected[name], c)
            assert v["volume_change_ml"] == 0 and v["dice_own_vs_perturbed"] in (1.0, None)
            predicted_any |= v["dice_own_vs_perturbed"] == 1.0
    assert predicted_any, "the model predicted no label at all: the Dice-1 check saw nothing"


# ---------------------------------------------------------------------------------------------------- bad input
def test_refuses_an_unknown_perturbation_before_loading_anything(text_trained, tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, _args(text_trained, out, "swap-sides"), "Unknown perturbation 'swap-sides'", "laterality",
            "n-stage", "drop-field:NAME")
    assert_no_output(out)


def test_refuses_a_case_without_text(text_trained, tmp_path, capsys):
    before = _checksums(text_trained["raw"])
    sidecar = json.load(open(os.path.join(text_trained["raw"], "clinical_text.json")))
    missing = _cases(text_trained)[1]
    del sidecar["cases"][missing]
    partial = tmp_path / "partial_clinical_text.json"
    partial.write_text(json.dumps(sidecar))
    out = tmp_path / "out"
    refused(capsys, _args(text_trained, out, "laterality", str(partial)), f"Case '{missing}' has no clinical text",
            "partial_clinical_text.json")
    assert_no_output(out)
    assert _checksums(text_trained["raw"]) == before


def test_refuses_a_model_that_takes_no_text(trained, text_trained, tmp_path, capsys):
    out = tmp_path / "out"
    args = _args(trained, out, "laterality", os.path.join(text_trained["raw"], "clinical_text.json"), TRAINER)
    refused(capsys, args, "takes spatial prompts, not clinical text", "TextPromptTrainer")
    assert_no_output(out)

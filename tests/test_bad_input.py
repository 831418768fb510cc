"""Bad input, as a new user gives it, to every command and to the session.

Every case must end with exit code 2 and one message that names what is wrong (the case, the file) and how to fix
it: no raw traceback, no output left behind, and the user's source files unchanged (checksums before and after).
The commands run in this process through ``nnunet_prompt.cli.main`` (the console script's entry point), so a
traceback of any exception type but SystemExit fails the test; a few run through the real console script too.
"""
import hashlib
import json
import os
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CONFIG, PLANS, TRAINER, console_script, run


def _checksums(folder) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def setup(trained, tmp_path_factory):
    """The trained model, its raw data (checksummed: no case may modify it) and valid prompts for its test cases."""
    from nnunet_prompt.interaction.user_prompts import prompt_from_label
    raw = trained["raw"]
    before = _checksums(raw)
    model_before = _checksums(trained["folder"])
    cases = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))
    prompts = {c: prompt_from_label(os.path.join(raw, "labelsTs", c + ".nii.gz")) for c in cases}
    work = tmp_path_factory.mktemp("bad_input")
    yield {**trained, "cases": cases, "prompts": prompts, "work": work, "images": os.path.join(raw, "imagesTs")}
    assert _checksums(raw) == before, "a bad-input case modified the user's raw data"
    assert _checksums(trained["folder"]) == model_before, "a bad-input case modified the trained model"


def refused(capsys, argv, *expected):
    """Run `nnunet-prompt ARGV`; it must exit with 2 and a message holding every expected fragment."""
    from nnunet_prompt.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, err
    return err


def write_json(path, obj=None, text=None):
    path.write_text(text if text is not None else json.dumps(obj))
    return str(path)


def predict_args(s, out, prompts=None, *extra, images=None):
    argv = ["predict", "-i", images or s["images"], "-o", str(out), "-d", str(s["id"]), "-c", CONFIG, "-f", "0",
            "-tr", TRAINER, "-p", PLANS, "-device", "cpu"]
    if prompts is not None:
        argv += ["--prompts", prompts]
    return argv + list(extra)


@contextmanager
def model_copy(setup, trainer, configuration):
    """A copy of the trained model under another trainer / configuration name, for a test to damage; removed after
    (the trained model itself stays intact)."""
    folder = os.path.join(os.environ["nnUNet_results"], setup["name"], f"{trainer}__{PLANS}__{configuration}")
    shutil.copytree(setup["folder"], folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def assert_no_output(out):
    assert not os.path.exists(out) or not os.listdir(out), f"partial output left in {out}: {os.listdir(out)}"


# ------------------------------------------------------------------------------------------- predict: prompts
def _first_prompt(s):
    return dict(s["prompts"][s["cases"][0]])


def _with_first(s, prompt):
    return {c: (prompt if i == 0 else s["prompts"][c]) for i, c in enumerate(s["cases"])}


BAD_PROMPTS = {
    # name: (prompts file content (callable of setup -> JSON text), expected fragments)
    "not_json": (lambda s: "{", ["not valid JSON"]),
    "a_list": (lambda s: "[]", ["JSON object mapping case identifiers"]),
    "duplicate_case_key": (lambda s: '{"%s": %s, "%s": %s, "%s": %s}' % (
        s["cases"][0], json.dumps(s["prompts"][s["cases"][0]]), s["cases"][0], json.dumps(s["prompts"][s["cases"][0]]),
        s["cases"][1], json.dumps(s["prompts"][s["cases"][1]])), ["twice", "duplicate"]),
    "unknown_key": (lambda s: json.dumps(_with_first(s, dict(_first_prompt(s), clicks=[[1, 2, 3]]))),
                    ["Unknown prompt key", "clicks"]),
    "empty_prompt": (lambda s: json.dumps(_with_first(s, {})), ["The prompt is empty"]),
    "empty_list": (lambda s: json.dumps(_with_first(s, [])), ["empty list of prompts"]),
    "nan_point": (lambda s: json.dumps(_with_first(s, {"positive_points": [[float("nan"), 2, 2]]})), ["non-finite"]),
    "two_coordinates": (lambda s: json.dumps(_with_first(s, {"positive_points": [[2, 2]]})), ["list of 3 numbers"]),
    "string_coordinate": (lambda s: json.dumps(_with_first(s, {"positive_points": [["a", 2, 2]]})), ["numbers"]),
    "point_outside": (lambda s: json.dumps(_with_first(s, {"positive_points": [[400, 2, 2]]})),
                      ["lies outside the image"]),
    "negative_coordinate": (lambda s: json.dumps(_with_first(s, {"positive_points": [[-3, 2, 2]]})),
                            ["lies outside the image"]),
    "inverted_box": (lambda s: json.dumps(_with_first(s, {"boxes": [{"min": [20, 20, 8], "max": [10, 10, 4]}]})),
                     ["Inverted box"]),
    "flat_box": (lambda s: json.dumps(_with_first(s, {"boxes": [{"min": [10, 10, 4], "max": [10, 10, 8]}]})),
                 ["Empty box"]),
    "huge_box": (lambda s: json.dumps(_with_first(s, {"boxes": [{"min": [0, 0, 0], "max": [999, 999, 999]}]})),
                 ["reaches outside the image"]),
    "box_without_max": (lambda s: json.dumps(_with_first(s, {"boxes": [{"min": [0, 0, 0]}]})), ["'min' and 'max'"]),
    "unknown_label_name": (lambda s: json.dumps(_with_first(s, dict(_first_prompt(s), label="GTVn"))),
                           ["Unknown label name 'GTVn'"]),
    "unknown_label_value": (lambda s: json.dumps(_with_first(s, dict(_first_prompt(s), label=7))),
                            ["Unknown label value 7"]),
    "bad_coordinate_system": (lambda s: json.dumps(_with_first(s, dict(_first_prompt(s), coordinates="ras"))),
                              ["'coordinates' must be one of"]),
    "text_only_to_spatial_model": (lambda s: json.dumps(_with_first(s, {"text": "left tumour"})),
                                   ["no location", "positive_points"]),
    "two_prompts_one_label": (lambda s: json.dumps(_with_first(s, [_first_prompt(s), _first_prompt(s)])),
                              ["two prompts for label 1"]),
    "no_case_in_images": (lambda s: json.dumps({"Nobody_999": _first_prompt(s)}), ["Nobody_999", "No entry"]),
    "missing_mask_file": (lambda s: json.dumps(_with_first(s, {"mask": "nowhere.nii.gz"})),
                          ["Mask file", "does not exist"]),
}


@pytest.mark.parametrize("name", sorted(BAD_PROMPTS))
def test_predict_refuses_bad_prompts(setup, tmp_path, capsys, name):
    content, expected = BAD_PROMPTS[name]
    prompts = write_json(tmp_path / f"{name}.json", text=content(setup))
    out = tmp_path / "out"
    refused(capsys, predict_args(setup, out, prompts), *expected, f"{name}.json")
    assert_no_output(out)


def _mask_file(path, reference, array=None, spacing=None):
    ref = sitk.ReadImage(reference)
    arr = np.zeros(sitk.GetArrayFromImage(ref).shape, np.uint8) if array is None else array
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref) if array is None or arr.shape == sitk.GetArrayFromImage(ref).shape else None
    if spacing is not None:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return str(path)


def test_predict_refuses_an_all_zero_mask(setup, tmp_path, capsys):
    case = setup["cases"][0]
    mask = _mask_file(tmp_path / "empty_mask.nii.gz", os.path.join(setup["images"], case + "_0000.nii.gz"))
    prompts = write_json(tmp_path / "p.json", _with_first(setup, {"mask": mask}))
    refused(capsys, predict_args(setup, tmp_path / "out", prompts), "empty_mask.nii.gz", "no foreground", case)
    assert_no_output(tmp_path / "out")


def test_predict_refuses_a_mask_on_another_grid(setup, tmp_path, capsys):
    case = setup["cases"][0]
    mask = _mask_file(tmp_path / "other_grid.nii.gz", os.path.join(setup["images"], case + "_0000.nii.gz"),
                      array=np.ones((5, 6, 7), np.uint8))
    prompts = write_json(tmp_path / "p.json", _with_first(setup, {"mask": mask}))
    refused(capsys, predict_args(setup, tmp_path / "out", prompts), "other_grid.nii.gz", "not on the image's grid")


def test_predict_refuses_a_case_without_prompts(setup, tmp_path, capsys):
    prompts = write_json(tmp_path / "p.json", {setup["cases"][0]: setup["prompts"][setup["cases"][0]]})
    refused(capsys, predict_args(setup, tmp_path / "out", prompts), f"No prompt for case '{setup['cases'][1]}'",
            "--allow-missing-prompts")


def test_predict_refuses_a_missing_prompts_file(setup, tmp_path, capsys):
    refused(capsys, predict_args(setup, tmp_path / "out", str(tmp_path / "nope.json")), "nope.json", "does not exist")


def test_predict_without_prompts_names_the_option(setup, tmp_path, capsys):
    refused(capsys, predict_args(setup, tmp_path / "out"), "--prompts prompts.json")


def test_predict_refuses_clinical_text_for_a_spatial_model(setup, tmp_path, capsys):
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    sidecar = write_json(tmp_path / "clinical.json", {c: {"text": "left"} for c in setup["cases"]})
    refused(capsys, predict_args(setup, tmp_path / "out", prompts, "--clinical-text", sidecar), "takes no clinical text")


def test_predict_refuses_cross_patch_for_a_model_without_its_head(setup, tmp_path, capsys):
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    refused(capsys, predict_args(setup, tmp_path / "out", prompts, "--cross-patch"), "PSAPTrainer_CPP")


# ------------------------------------------------------------------------------------- predict: input/output
def test_predict_refuses_output_equal_to_input(setup, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(setup["images"], images)
    before = _checksums(images)
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    refused(capsys, predict_args(setup, images, prompts, images=str(images)), "-o", "-i", "same folder")
    assert _checksums(images) == before


def test_predict_refuses_an_output_path_that_is_a_file(setup, tmp_path, capsys):
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(capsys, predict_args(setup, afile, prompts), "afile", "not a folder")
    refused(capsys, predict_args(setup, afile / "sub", prompts), "afile", "cannot be created")
    assert afile.read_text() == "x"


def test_predict_refuses_a_missing_or_empty_input_folder(setup, tmp_path, capsys):
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    refused(capsys, predict_args(setup, tmp_path / "out", prompts, images=str(tmp_path / "nowhere")), "nowhere",
            "does not exist")
    (tmp_path / "empty").mkdir()
    refused(capsys, predict_args(setup, tmp_path / "out", prompts, images=str(tmp_path / "empty")), "No images ending")
    assert_no_output(tmp_path / "out")


def test_predict_refuses_an_image_without_channel_suffix(setup, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    case = setup["cases"][0]
    shutil.copy(os.path.join(setup["images"], case + "_0000.nii.gz"), images / f"{case}.nii.gz")
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    refused(capsys, predict_args(setup, tmp_path / "out", prompts, images=str(images)), f"{case}.nii.gz", "_0000")
    assert_no_output(tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncated", "random_bytes"])
def test_predict_refuses_a_damaged_image(setup, tmp_path, capsys, damage):
    images = tmp_path / "images"
    shutil.copytree(setup["images"], images)
    victim = images / (setup["cases"][1] + "_0000.nii.gz")
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    out = tmp_path / "out"
    refused(capsys, predict_args(setup, out, prompts, images=str(images)), victim.name)
    assert_no_output(out)


@pytest.mark.parametrize("step", ["0", "1.5", "-0.5", "half"])
def test_predict_refuses_a_bad_step_size(setup, tmp_path, capsys, step):
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    refused(capsys, predict_args(setup, tmp_path / "out", prompts, "-step_size", step), "-step_size")
    assert_no_output(tmp_path / "out")


@pytest.mark.parametrize("fold,expected", [("zero", "-f"), ("7", "fold_7"), ("-1", "numbered from 0")])
def test_predict_refuses_a_bad_fold(setup, tmp_path, capsys, fold, expected):
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    argv = predict_args(setup, tmp_path / "out", prompts)
    argv[argv.index("-f") + 1] = fold
    refused(capsys, argv, expected)


def test_predict_refuses_a_missing_checkpoint_name(setup, tmp_path, capsys):
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    refused(capsys, predict_args(setup, tmp_path / "out", prompts, "-chk", "checkpoint_best_ever.pth"),
            "checkpoint_best_ever.pth")


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "empty"])
def test_predict_refuses_a_damaged_checkpoint(setup, tmp_path, capsys, damage):
    with model_copy(setup, TRAINER, "3d_lowres") as folder:
        ckpt = os.path.join(folder, "fold_0", "checkpoint_final.pth")
        data = open(ckpt, "rb").read()
        with open(ckpt, "wb") as f:
            f.write({"truncated": data[:len(data) // 2], "random_bytes": os.urandom(4096), "empty": b""}[damage])
        prompts = write_json(tmp_path / "p.json", setup["prompts"])
        argv = predict_args(setup, tmp_path / "out", prompts)
        argv[argv.index("-c") + 1] = "3d_lowres"
        refused(capsys, argv, "checkpoint_final.pth", "cannot be read")
        assert_no_output(tmp_path / "out")


def test_predict_refuses_unknown_dataset_trainer_and_plans(setup, tmp_path, capsys):
    prompts = write_json(tmp_path / "p.json", setup["prompts"])
    for flag, value, expected in (("-d", "987", "Unknown dataset '987'"), ("-tr", "NoSuchTrainer", "No trained model"),
                                  ("-p", "nnUNetPlans", "No trained model")):
        argv = predict_args(setup, tmp_path / "out", prompts)
        argv[argv.index(flag) + 1] = value
        refused(capsys, argv, expected)
    assert_no_output(tmp_path / "out")


def test_predict_refuses_a_model_without_prompts(setup, tmp_path, capsys):
    """A model folder whose plans carry no prompt record (a plain nnU-Net model, or foreign files)."""
    with model_copy(setup, "nnUNetTrainer", CONFIG) as folder:
        plans_file = os.path.join(folder, "plans.json")
        plans = json.load(open(plans_file))
        from nnunet_prompt.model_record import PLANS_KEY
        plans.pop(PLANS_KEY)
        json.dump(plans, open(plans_file, "w"))
        prompts = write_json(tmp_path / "p.json", setup["prompts"])
        argv = predict_args(setup, tmp_path / "out", prompts)
        argv[argv.index("-tr") + 1] = "nnUNetTrainer"
        refused(capsys, argv, "nnUNetTrainer", "nnUNetv2_predict")


def test_predict_refuses_a_broken_model_plans_file(setup, tmp_path, capsys):
    with model_copy(setup, TRAINER, "2d") as folder:
        with open(os.path.join(folder, "plans.json"), "w") as f:
            f.write('{"plans_name": ')
        prompts = write_json(tmp_path / "p.json", setup["prompts"])
        argv = predict_args(setup, tmp_path / "out", prompts)
        argv[argv.index("-c") + 1] = "2d"
        refused(capsys, argv, "plans.json", "not valid JSON")


def test_predict_device_default_works_without_a_gpu(setup, tmp_path):
    """No -device: CUDA if there is one, else the CPU, and the command says which. An entry of the prompts file for
    a case that is not in -i (a dataset's prompts used for a subset) is named, not silently ignored."""
    import torch
    prompts = write_json(tmp_path / "p.json", dict(setup["prompts"], Nobody_999=_first_prompt(setup)))
    argv = predict_args(setup, tmp_path / "out", prompts)
    i = argv.index("-device")
    del argv[i:i + 2]
    proc = run([console_script("nnunet-prompt"), *argv, "--disable_tta"], setup["env"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}" in proc.stdout
    assert "['Nobody_999']" in proc.stdout and "not predicted" in proc.stdout
    assert sorted(f for f in os.listdir(tmp_path / "out") if f.endswith(".nii.gz")) == \
        sorted(c + ".nii.gz" for c in setup["cases"])


def test_console_script_gives_exit_code_2_and_no_traceback(setup, tmp_path):
    prompts = write_json(tmp_path / "p.json", text="{")
    proc = run([console_script("nnunet-prompt"), *predict_args(setup, tmp_path / "out", prompts)], setup["env"])
    assert proc.returncode == 2 and "Traceback" not in proc.stdout and "not valid JSON" in proc.stdout


# ------------------------------------------------------------------------------------------------- evaluate
def _refs(setup):
    return os.path.join(setup["raw"], "labelsTs")


def _dataset_json(setup):
    return os.path.join(setup["raw"], "dataset.json")


def _prediction_folder(setup, tmp_path, change=None):
    """Copies of the reference labels as predictions; ``change(image) -> image`` alters the first."""
    pred = tmp_path / "pred"
    shutil.copytree(_refs(setup), pred)
    if change is not None:
        first = pred / (setup["cases"][0] + ".nii.gz")
        sitk.WriteImage(change(sitk.ReadImage(str(first))), str(first))
    return pred


def _shifted(img):
    img.SetOrigin(tuple(o + 40.0 for o in img.GetOrigin()))
    return img


def _rotated(img):
    img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return img


def _probabilities(img):
    out = sitk.Cast(img, sitk.sitkFloat32) * 0.7
    out.CopyInformation(img)
    return out


def _unknown_label(img):
    arr = sitk.GetArrayFromImage(img)
    arr[arr == 1] = 5
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


def _cropped(img):
    return img[:-2, :, :]


BAD_PREDICTIONS = {"origin": (_shifted, "origin"), "direction": (_rotated, "direction"),
                   "probabilities": (_probabilities, "not a label map"), "unknown_label": (_unknown_label, "5"),
                   "shape": (_cropped, "does not match")}


@pytest.mark.parametrize("name", sorted(BAD_PREDICTIONS))
def test_evaluate_refuses_a_prediction_that_does_not_fit(setup, tmp_path, capsys, name):
    change, expected = BAD_PREDICTIONS[name]
    pred = _prediction_folder(setup, tmp_path, change)
    refused(capsys, ["evaluate", _refs(setup), str(pred), "-djfile", _dataset_json(setup)], expected,
            setup["cases"][0])
    assert not (pred / "metrics.json").exists() and not (pred / "metrics.csv").exists()


def test_evaluate_refuses_a_truncated_prediction(setup, tmp_path, capsys):
    pred = _prediction_folder(setup, tmp_path)
    victim = pred / (setup["cases"][0] + ".nii.gz")
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2])
    refused(capsys, ["evaluate", _refs(setup), str(pred), "-djfile", _dataset_json(setup)], victim.name)
    assert not (pred / "metrics.json").exists()


def test_evaluate_refuses_missing_cases_and_folders(setup, tmp_path, capsys):
    pred = _prediction_folder(setup, tmp_path)
    os.remove(pred / (setup["cases"][1] + ".nii.gz"))
    refused(capsys, ["evaluate", _refs(setup), str(pred), "-djfile", _dataset_json(setup)], "lacks 1 case")
    refused(capsys, ["evaluate", str(tmp_path / "nowhere"), str(pred), "-djfile", _dataset_json(setup)], "nowhere")
    refused(capsys, ["evaluate", _refs(setup), str(tmp_path / "nowhere"), "-djfile", _dataset_json(setup)], "nowhere")
    (tmp_path / "empty").mkdir()
    refused(capsys, ["evaluate", str(tmp_path / "empty"), str(pred), "-djfile", _dataset_json(setup)],
            "No reference files")


def test_evaluate_refuses_a_missing_or_broken_dataset_json(setup, tmp_path, capsys):
    pred = _prediction_folder(setup, tmp_path)
    refused(capsys, ["evaluate", _refs(setup), str(pred), "-djfile", str(tmp_path / "nope.json")], "nope.json")
    broken = write_json(tmp_path / "broken.json", text='{"labels": ')
    refused(capsys, ["evaluate", _refs(setup), str(pred), "-djfile", broken], "broken.json", "not valid JSON")
    no_labels = write_json(tmp_path / "no_labels.json", {"file_ending": ".nii.gz"})
    refused(capsys, ["evaluate", _refs(setup), str(pred), "-djfile", no_labels], "no_labels.json", "labels")


# ----------------------------------------------------------------------------------- interactive-eval, compare
@pytest.mark.parametrize("clicks", ["0", "-1"])
def test_interactive_eval_refuses_a_click_count_below_one(setup, tmp_path, capsys, clicks):
    out = tmp_path / "ie"
    refused(capsys, ["interactive-eval", "-d", str(setup["id"]), "-tr", TRAINER, "-p", PLANS, "--clicks", clicks,
                     "-device", "cpu", "-o", str(out)], "--clicks")
    assert not out.exists()


@pytest.mark.parametrize("command", ["interactive-eval", "compare"])
def test_fold_all_has_no_validation_cases(setup, tmp_path, capsys, command):
    refused(capsys, [command, "-d", str(setup["id"]), "-p", PLANS, "-f", "all", "-o", str(tmp_path / "o")],
            "has no validation cases", *(["--test-set"] if command == "interactive-eval" else []))
    assert not (tmp_path / "o").exists()


def test_interactive_eval_refuses_a_missing_model(setup, tmp_path, capsys):
    out = tmp_path / "ie"
    refused(capsys, ["interactive-eval", "-d", str(setup["id"]), "-tr", "NoSuchTrainer", "-p", PLANS, "--clicks", "1",
                     "-device", "cpu", "-o", str(out)], "NoSuchTrainer")
    refused(capsys, ["interactive-eval", "-d", str(setup["id"]), "-tr", TRAINER, "-p", PLANS, "-f", "3", "--clicks",
                     "1", "-device", "cpu", "-o", str(out)], "fold_3")
    assert not out.exists()


def _test_folder_copy(setup, folder, relabel=None, shift_origin=False):
    """imagesTs/labelsTs copied into ``folder``: label values changed by ``relabel`` {old: new}, or the labels'
    origin moved by 10 mm (``shift_origin``)."""
    images, labels = folder / "images", folder / "labels"
    shutil.copytree(setup["images"], images)
    shutil.copytree(os.path.join(setup["raw"], "labelsTs"), labels)
    for f in os.listdir(labels):
        img = sitk.ReadImage(str(labels / f))
        a = sitk.GetArrayFromImage(img)
        for old, new in (relabel or {}).items():
            a = np.where(a == old, new, a).astype(a.dtype)
        out = sitk.GetImageFromArray(a)
        out.CopyInformation(img)
        if shift_origin:
            out.SetOrigin([o + 10.0 for o in img.GetOrigin()])
        sitk.WriteImage(out, str(labels / f))
    return images, labels


def test_interactive_eval_refuses_bad_labelled_folders(setup, tmp_path, capsys):
    """-i/-l: an unpaired label or image, an unmapped label value, a mapping to an unknown label and a label off its
    image's grid are refused before any model runs, naming the case and the file, and leave no output."""
    out = tmp_path / "ie"
    cmd = ["interactive-eval", "-d", str(setup["id"]), "-tr", TRAINER, "-p", PLANS, "-device", "cpu", "-o", str(out)]
    first, second = setup["cases"][:2]
    images, labels = _test_folder_copy(setup, tmp_path / "renamed", relabel={1: 3})
    os.remove(images / f"{second}_0000.nii.gz")
    refused(capsys, cmd + ["-i", str(images), "-l", str(labels), "--label-map", "3=1"],
            f"Case '{second}'", f"{second}.nii.gz", "has no image")
    shutil.copy(os.path.join(setup["images"], f"{second}_0000.nii.gz"), images)
    os.remove(labels / f"{first}.nii.gz")
    refused(capsys, cmd + ["-i", str(images), "-l", str(labels), "--label-map", "3=1"],
            f"Case '{first}'", f"{first}_0000.nii.gz", "has no label file")
    shutil.copy(os.path.join(setup["raw"], "labelsTs", f"{first}.nii.gz"), labels)  # value 1, not 3
    refused(capsys, cmd + ["-i", str(images), "-l", str(labels), "--label-map", "3=1"],
            f"Case '{first}'", f"{first}.nii.gz", "label value(s) [1]", "--label-map")
    refused(capsys, cmd + ["-i", str(images), "-l", str(labels), "--label-map", "3=nosuch", "1=1"],
            "'nosuch' is neither a label name nor a label value")
    refused(capsys, cmd + ["-i", str(images), "-l", str(labels)], f"{second}.nii.gz", "label value(s) [3]",
            "dataset.json")
    images, labels = _test_folder_copy(setup, tmp_path / "shifted", shift_origin=True)
    refused(capsys, cmd + ["-i", str(images), "-l", str(labels)], f"Case '{first}'", f"{first}.nii.gz",
            f"{first}_0000.nii.gz", "does not lie on the grid", "origin")
    refused(capsys, cmd + ["-i", str(images)], "-i and -l go together")
    refused(capsys, cmd + ["--protocol", "cvpr25", "--clicks", "3"], "cvpr25", "--clicks")
    assert not out.exists()


def test_compare_names_an_empty_validation_folder(setup, tmp_path, capsys):
    with model_copy(setup, "nnUNetTrainer", CONFIG) as base:
        for f in os.listdir(os.path.join(base, "fold_0", "validation")):
            os.remove(os.path.join(base, "fold_0", "validation", f))
        refused(capsys, ["compare", "-d", str(setup["id"]), "--trainers", TRAINER, "-p", PLANS, "-f", "0",
                         "-o", str(tmp_path / "cmp")], "no validation predictions", "fold_0")
        refused(capsys, ["compare", "-d", str(setup["id"]), "--baseline", "NoSuchBaseline", "--trainers", TRAINER,
                         "-p", PLANS, "-f", "0", "-o", str(tmp_path / "cmp")], "NoSuchBaseline")
    assert not (tmp_path / "cmp").exists()


# ------------------------------------------------------------------------------------------- plan, convert
def test_plan_refuses_a_broken_dataset_json(setup, tmp_path, capsys):
    ds = os.path.join(os.environ["nnUNet_raw"], "Dataset993_Broken")
    shutil.copytree(setup["raw"], ds)
    try:
        with open(os.path.join(ds, "dataset.json"), "w") as f:
            f.write('{"channel_names": ')
        refused(capsys, ["plan", "993", "--no_pp"], "dataset.json", "not valid JSON")
    finally:
        shutil.rmtree(ds)
    refused(capsys, ["plan", "994", "--no_pp"], "994")


def _structure_map(tmp_path, text):
    p = tmp_path / "map.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("map_text,expected", [
    ("labels:\n  GTVp: ['re:gtv(']\n", "regular expression"),
    ("labels:\n  GTVp: {value: one, aliases: [GTVp]}\n", "value"),
    ("labels: [GTVp]\n", "labels"),
    ("labels: {GTVp: [GTVp]\n", "YAML"),
])
def test_convert_refuses_a_bad_structure_map(setup, tmp_path, capsys, map_text, expected):
    src = tmp_path / "src"
    (src / "P1").mkdir(parents=True)
    (src / "P1" / "note.txt").write_text("not dicom")
    refused(capsys, ["convert", "dicom-rt", str(src), "--dataset-id", "995", "--name", "Bad",
                     "--structure-map", _structure_map(tmp_path, map_text)], "map.yaml", expected)
    assert not [d for d in os.listdir(os.environ["nnUNet_raw"]) if d.startswith("Dataset995")]


def test_convert_refuses_missing_empty_and_non_dicom_sources(setup, tmp_path, capsys):
    refused(capsys, ["convert", "dicom-rt", str(tmp_path / "nowhere"), "--dataset-id", "995", "--name", "Bad"],
            "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    refused(capsys, ["convert", "dicom-rt", str(tmp_path / "empty"), "--dataset-id", "995", "--name", "Bad"], "empty")
    src = tmp_path / "src"
    (src / "P1").mkdir(parents=True)
    (src / "P1" / "a.dcm").write_bytes(os.urandom(2000))
    before = _checksums(src)
    refused(capsys, ["convert", "dicom-rt", str(src), "--dataset-id", "995", "--name", "Bad"], "src")
    assert _checksums(src) == before
    assert not [d for d in os.listdir(os.environ["nnUNet_raw"]) if d.startswith("Dataset995")]


def test_convert_refuses_bad_targets(setup, tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    (src / "P1").mkdir(parents=True)
    refused(capsys, ["convert", "dicom-rt", str(src), "--dataset-id", "1200", "--name", "Bad"], "1200")
    refused(capsys, ["convert", "dicom-rt", str(src), "--dataset-id", "995", "--name", "Bad name!"], "letters")
    refused(capsys, ["convert", "dicom-rt", str(src), "--dataset-id", str(setup["id"]), "--name", "Other"],
            "already used")
    afile = tmp_path / "raw_is_a_file"
    afile.write_text("x")
    monkeypatch.setenv("nnUNet_raw", str(afile))
    refused(capsys, ["convert", "dicom-rt", str(src), "--dataset-id", "995", "--name", "Bad"], "nnUNet_raw",
            "raw_is_a_file")
    assert afile.read_text() == "x"


# -------------------------------------------------------------------------------------------- the session
@pytest.fixture(scope="module")
def session(setup):
    from nnunet_prompt.inference.session import InteractiveSession
    return InteractiveSession(setup["folder"], 0, "cpu")


def test_session_before_an_image(setup):
    from nnunet_prompt.inference.session import InteractiveSession
    fresh = InteractiveSession(setup["folder"], 0, "cpu")
    for call in (lambda: fresh.undo(), lambda: fresh.add_point((1, 1, 1)), lambda: fresh.reset(),
                 lambda: fresh.add_box((1, 1, 1), (5, 5, 5))):
        with pytest.raises(RuntimeError, match="set_image"):
            call()


@pytest.mark.parametrize("array,spacing,expected", [
    (np.full((16, 40, 40), np.nan, np.float32), (1, 1, 1), "NaN"),
    (np.zeros((40, 40), np.float32), (1, 1, 1), "(z, y, x)"),
    (np.zeros((2, 16, 40, 40), np.float32), (1, 1, 1), "expects 1 image channel"),
    (np.zeros((16, 40, 40), np.float32), None, "spacing"),
    (np.zeros((16, 40, 40), np.float32), (1, 0, 1), "spacing"),
    (np.zeros((16, 40, 40), np.float32), (1, 1), "spacing"),
])
def test_session_refuses_bad_images(session, array, spacing, expected):
    with pytest.raises(ValueError, match=None) as e:
        session.set_image(array, spacing=spacing)
    assert expected in str(e.value)


def test_session_refuses_bad_interactions(setup, session):
    from nnunet_prompt.prompts.model import PromptError
    session.set_image(os.path.join(setup["images"], setup["cases"][0] + "_0000.nii.gz"))
    for call, expected in ((lambda: session.add_point((400, 1, 1)), "outside the image"),
                           (lambda: session.add_point((float("nan"), 1, 1)), "non-finite"),
                           (lambda: session.add_point((1, 1)), "3 numbers"),
                           (lambda: session.add_box((9, 9, 9), (1, 1, 1)), "Inverted box")):
        with pytest.raises(PromptError) as e:
            call()
        assert expected in str(e.value)
    with pytest.raises(IndexError, match="Nothing to undo"):
        session.undo()

"""The real pipeline: nnU-Net's own `nnUNetv2_train` trains PromptTrainer (found through nnUNet_extTrainer),
resumes it with --c, runs the final validation with simulated prompts, and the model predicts with
prompts from a JSON file through `nnunet-prompt predict` and loads in plain `nnUNetv2_predict`."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import CONFIG, PLANS, TRAINER, console_script, run


def test_training_through_nnunets_cli(trained):
    folder = trained["folder"]
    assert "Using trainer 'PromptTrainer_demo'" in trained["log"] or "Found class PromptTrainer_demo" in trained["log"]
    assert os.path.isfile(os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    # the model is described by one record in the plans.json nnU-Net copied beside it, and by no sidecar file
    record = json.load(open(os.path.join(folder, "plans.json")))["nnunet_prompt"]
    assert record["trainer"] == TRAINER
    assert record["prompt_encoding"]["channels"] == ["positive_clicks", "negative_clicks", "box", "previous_mask"]
    assert not any(os.path.exists(os.path.join(folder, f)) for f in ("prompt_encoding.json", "clinical_context.json",
                                                                      "sam_model.json", "distill_teacher.json"))
    ckpt = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    first_conv = [v for k, v in ckpt["network_weights"].items() if k.endswith("weight") and v.ndim == 5][0]
    assert first_conv.shape[1] == 1 + 4, "one CT channel + four prompt channels"
    assert ckpt["trainer_name"] == TRAINER and ckpt["current_epoch"] == 1
    log = "".join(open(os.path.join(folder, "fold_0", f)).read() for f in os.listdir(os.path.join(folder, "fold_0"))
                  if f.startswith("training_log"))
    assert "prompt simulation" in log and "refinement forward passes" in log


def test_final_validation_uses_simulated_prompts(trained):
    val = os.path.join(trained["folder"], "fold_0", "validation")
    summary = json.load(open(os.path.join(val, "summary.json")))
    assert "foreground_mean" in summary and summary["metric_per_case"]
    used = json.load(open(os.path.join(val, "simulated_prompts_rank0.json")))
    gt_folder = os.path.join(trained["env"]["nnUNet_preprocessed"], trained["name"], "gt_segmentations")
    for case, info in used.items():
        gt = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(gt_folder, case + ".nii.gz")))
        assert info["labels"] == [1] if gt.any() else info["labels"] == []
        assert info["prompt"] == "box+clicks"
    # rank 0 merges the ranks' records into one (a single process: its own)
    assert json.load(open(os.path.join(val, "simulated_prompts.json"))) == used


def test_resume_with_c(trained):
    env = dict(trained["env"], NNUNET_PROMPT_DEMO_EPOCHS="2")
    proc = run(trained["cmd"] + ["--c"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    ckpt = torch.load(os.path.join(trained["folder"], "fold_0", "checkpoint_final.pth"), map_location="cpu",
                      weights_only=False)
    assert ckpt["current_epoch"] == 2
    assert "Epoch 1" in proc.stdout and "Epoch 0" not in proc.stdout


def _prompts_for(raw, cases):
    from nnunet_prompt.interaction.user_prompts import prompt_from_label
    return {c: prompt_from_label(os.path.join(raw, "labelsTs", c + ".nii.gz")) for c in cases}


def test_prompted_prediction_from_a_json_file(trained, tmp_path):
    raw = trained["raw"]
    cases = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(_prompts_for(raw, cases)))
    out = tmp_path / "pred"
    proc = run([console_script("nnunet-prompt"), "predict", "-i", os.path.join(raw, "imagesTs"), "-o", str(out),
                "-d", str(trained["id"]), "-c", CONFIG, "-f", "0", "-tr", TRAINER, "-p", PLANS,
                "--prompts", str(prompts), "-device", "cpu"], trained["env"])
    assert proc.returncode == 0, proc.stdout[-5000:]
    for c in cases:
        img = sitk.ReadImage(os.path.join(raw, "imagesTs", c + "_0000.nii.gz"))
        seg = sitk.ReadImage(str(out / (c + ".nii.gz")))
        assert seg.GetSize() == img.GetSize()
        np.testing.assert_allclose(seg.GetSpacing(), img.GetSpacing())
        np.testing.assert_allclose(seg.GetOrigin(), img.GetOrigin())
        np.testing.assert_allclose(seg.GetDirection(), img.GetDirection())


def test_prompt_channels_change_the_prediction(trained):
    from nnunet_prompt.inference.predictor import PromptPredictor
    from nnunet_prompt.prompts.model import Prompt
    raw = trained["raw"]
    case = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))[0]
    image = os.path.join(raw, "imagesTs", case + "_0000.nii.gz")
    predictor = PromptPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(trained["folder"], (0,), "checkpoint_final.pth")
    data, _, props = predictor.configuration_manager.preprocessor_class(verbose=False).run_case(
        [image], None, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json)
    data = torch.from_numpy(data)
    size = sitk.ReadImage(image).GetSize()
    left = {"boxes": [{"min": [2, 2, 2], "max": [size[0] // 2 - 2, size[1] - 3, size[2] - 3]}]}
    right = {"boxes": [{"min": [size[0] // 2 + 2, 2, 2], "max": [size[0] - 3, size[1] - 3, size[2] - 3]}]}
    logits = []
    for p in (left, right):
        predictor.set_prompts({case: [Prompt.from_dict(p)]}, "test")
        ch = predictor.prepare_case_prompts(case, data.shape[1:], props)
        assert set(ch) == {1} and ch[1][2].sum() > 0
        with torch.no_grad():
            logits.append(predictor.predict_prompted_logits(data, ch)[1])
    diff = (logits[0] - logits[1]).abs()
    assert float(diff.max()) > 1e-3, "different prompts must give different outputs"


def test_plain_nnunetv2_predict_loads_the_prompt_model(trained, tmp_path):
    proc = run([console_script("nnUNetv2_predict"), "-i", os.path.join(trained["raw"], "imagesTs"), "-o",
                str(tmp_path / "plain"), "-d", str(trained["id"]), "-c", CONFIG, "-f", "0", "-tr", TRAINER, "-p", PLANS,
                "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"], trained["env"])
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "received no prompt channels" in proc.stdout  # stderr is merged into stdout
    assert len([f for f in os.listdir(tmp_path / "plain") if f.endswith(".nii.gz")]) == 2


def test_bad_input_gives_one_clear_message_and_no_output(trained, tmp_path):
    raw = trained["raw"]
    cases = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))
    base = [console_script("nnunet-prompt"), "predict", "-i", os.path.join(raw, "imagesTs"), "-d", str(trained["id"]),
            "-c", CONFIG, "-f", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"]

    prompts = _prompts_for(raw, cases)
    only_first = tmp_path / "only_first.json"
    only_first.write_text(json.dumps({cases[0]: prompts[cases[0]]}))
    out = tmp_path / "out_missing"
    proc = run(base + ["-o", str(out), "--prompts", str(only_first)], trained["env"])
    assert proc.returncode == 2
    assert f"No prompt for case '{cases[1]}'" in proc.stdout and "only_first.json" in proc.stdout
    assert not out.exists() or not any(f.endswith(".nii.gz") for f in os.listdir(out))

    wrong_label = tmp_path / "wrong_label.json"
    wrong_label.write_text(json.dumps({c: dict(prompts[c], label="GTVn") for c in cases}))
    proc = run(base + ["-o", str(tmp_path / "o2"), "--prompts", str(wrong_label)], trained["env"])
    assert proc.returncode == 2 and "Unknown label name 'GTVn'" in proc.stdout

    malformed = tmp_path / "malformed.json"
    malformed.write_text("{")
    proc = run(base + ["-o", str(tmp_path / "o3"), "--prompts", str(malformed)], trained["env"])
    assert proc.returncode == 2 and "not valid JSON" in proc.stdout and "malformed.json" in proc.stdout

    env = {k: v for k, v in trained["env"].items() if k != "nnUNet_results"}
    proc = run(base + ["-o", str(tmp_path / "o4"), "--prompts", str(only_first)], env)
    assert proc.returncode == 2 and "nnUNet_results" in proc.stdout and "export nnUNet_results" in proc.stdout

    proc = run(base[:base.index("-f") + 1] + ["3"] + base[base.index("-f") + 2:] + ["-o", str(tmp_path / "o6"),
               "--prompts", str(only_first)], trained["env"])
    assert proc.returncode == 2 and "has no fold_3/checkpoint_final.pth" in proc.stdout and "fold_0" in proc.stdout

    two_channels = tmp_path / "two_channels"
    two_channels.mkdir()
    for c in cases:
        for ch in ("0000", "0001"):
            os.symlink(os.path.join(raw, "imagesTs", c + "_0000.nii.gz"), two_channels / f"{c}_{ch}.nii.gz")
    all_prompts = tmp_path / "all.json"
    all_prompts.write_text(json.dumps(prompts))
    proc = run(base[:3] + [str(two_channels)] + base[4:] + ["-o", str(tmp_path / "o7"), "--prompts", str(all_prompts)],
               trained["env"])
    assert proc.returncode == 2 and "2 channel file(s), the model expects 1" in proc.stdout
    assert not (tmp_path / "o7").exists()

    proc = run(base[:5] + ["987"] + base[6:] + ["-o", str(tmp_path / "o5"), "--prompts", str(only_first)],
               trained["env"])
    assert proc.returncode == 2 and "Unknown dataset '987'" in proc.stdout


def test_a_label_without_foreground_cannot_become_a_prompt(tmp_path):
    from nnunet_prompt.interaction.user_prompts import prompt_from_label
    img = sitk.Image(8, 8, 8, sitk.sitkUInt8)
    sitk.WriteImage(img, str(tmp_path / "empty.nii.gz"))
    with pytest.raises(ValueError, match="empty.nii.gz' has no foreground"):
        prompt_from_label(str(tmp_path / "empty.nii.gz"))


def test_prompt_channels_reach_the_network_tile_by_tile(trained):
    """Predict appends each sliding-window tile's prompt channels when the tile reaches the network (no whole-image
    image+prompt tensor): the logits equal those of the whole concatenated input, over several tiles with padding."""
    from nnunet_prompt.inference.predictor import PromptPredictor
    from nnunet_prompt.prompts.model import Prompt
    raw = trained["raw"]
    case = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))[0]
    image = os.path.join(raw, "imagesTs", case + "_0000.nii.gz")
    predictor = PromptPredictor(tile_step_size=0.5, use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(trained["folder"], (0,), "checkpoint_final.pth")
    data, _, props = predictor.configuration_manager.preprocessor_class(verbose=False).run_case(
        [image], None, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json)
    size = sitk.ReadImage(image).GetSize()
    predictor.set_prompts({case: [Prompt.from_dict({"boxes": [{"min": [2, 2, 2], "max": [size[0] // 2, size[1] - 3,
                                                                                          size[2] - 3]}],
                                                     "positive_points": [[size[0] // 4, size[1] // 2, size[2] // 2]]})]})
    ch = predictor.prepare_case_prompts(case, data.shape[1:], props)[1]
    patch = predictor.configuration_manager.patch_size
    # a wider image than one patch along the last axis (several tiles), and shorter along the first (padding)
    data = torch.from_numpy(np.concatenate([data, data[..., ::-1]], -1)[:, :max(patch[0] - 3, 1)].copy())
    ch = torch.cat([ch, ch.flip(-1)], -1)[:, :data.shape[1]]
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    with torch.no_grad():
        per_tile = predictor.predict_prompted_logits(data, {1: ch})[1].float()
        with predictor._object_output():
            whole = predictor.predict_sliding_window_return_logits(torch.cat([data.float(), ch.float()], 0)).float()
    assert len(predictor._internal_get_sliding_window_slicers(
        [max(s, p) for s, p in zip(data.shape[1:], patch)])) > 1
    np.testing.assert_allclose(per_tile.numpy(), (whole[1] - whole[0]).numpy(), atol=2e-2)
    assert float((whole[1] - whole[0]).abs().max()) > 0.1

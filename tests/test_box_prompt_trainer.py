"""BoxPromptTrainer (the MedSAM study's "nnU-Net w/ box") through the real pipeline, and the oracle boxes of
`nnunet-prompt boxes-from-labels`: nnU-Net's `nnUNetv2_train` trains it on the tiny dataset, `--c` resumes it, and
`nnunet-prompt predict` predicts with a boxes-from-labels prompts file given to it."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from conftest import CONFIG, PLANS, console_script, run, train_demo_trainer

TRAINER = "BoxPromptTrainer_demo"


@pytest.fixture(scope="module")
def box_trained(planned_dataset):
    return train_demo_trainer(planned_dataset, TRAINER, 3)


def _cases(raw):
    return sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))


def _boxes_from_labels(env, raw, dataset, out, *extra):
    return run([console_script("nnunet-prompt"), "boxes-from-labels", "-l", os.path.join(raw, "labelsTs"), "-d",
                str(dataset), "-o", str(out), *extra], env)


def _per_slice_rectangles(mask_zyx, axis_zyx):
    """scipy's reference: the tight rectangle of every 8-connected component of every slice, as (x, y, z) boxes."""
    out = []
    for s in range(mask_zyx.shape[axis_zyx]):
        sl = np.take(mask_zyx, s, axis=axis_zyx)
        lab, _ = ndimage.label(sl, structure=np.ones((3, 3)))
        for obj in ndimage.find_objects(lab):
            lo, hi = [obj[0].start, obj[1].start], [obj[0].stop - 1, obj[1].stop - 1]
            lo.insert(axis_zyx, s)
            hi.insert(axis_zyx, s)
            out.append((tuple(lo[::-1]), tuple(hi[::-1])))
    return sorted(out)


def test_trained_model_reads_only_the_box_channel(box_trained):
    folder = box_trained["folder"]
    record = json.load(open(os.path.join(folder, "plans.json")))["nnunet_prompt"]
    assert record["trainer"] == TRAINER and record["network"]["prompt_channels_used"] == ["box"]
    assert record["prompt_encoding"]["channels"] == ["positive_clicks", "negative_clicks", "box", "previous_mask"]
    ckpt = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    first_conv = [v for k, v in ckpt["network_weights"].items() if k.endswith("weight") and v.ndim == 5][0]
    assert first_conv.shape[1] == 1 + 1, "one CT channel + the box channel"
    used = json.load(open(os.path.join(folder, "fold_0", "validation", "simulated_prompts.json")))
    assert used and all(v["prompt"] == "slice_boxes" for v in used.values())


def test_box_channel_matters_and_the_others_do_not(box_trained):
    from nnunet_prompt.inference.predictor import PromptPredictor
    from nnunet_prompt.prompts.encoding import BOX, MASK, NEG, POS
    predictor = PromptPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(box_trained["folder"], (0,), "checkpoint_final.pth")
    assert predictor.prompt_channels_used == ("box",)
    net = predictor.network
    net.load_state_dict(predictor.list_of_parameters[0])
    net.eval()
    patch = [int(v) for v in predictor.configuration_manager.patch_size]
    torch.manual_seed(0)
    x = torch.cat([torch.randn(1, 1, *patch), torch.zeros(1, 4, *patch)], 1)
    boxed = x.clone()
    boxed[0, 1 + BOX, :, 4:patch[1] // 2, 4:patch[2] // 2] = 1
    other = boxed.clone()
    other[0, 1 + POS, 5:9, 5:9, 5:9] = 1
    other[0, 1 + NEG, 1:3, 1:3, 1:3] = 1
    other[0, 1 + MASK] = 1
    with torch.no_grad():
        out = [net(t) for t in (x, boxed, other)]  # built without deep supervision: one output
    assert float((out[0] - out[1]).abs().max()) > 1e-4, "the box channel must change the output"
    torch.testing.assert_close(out[1], out[2], msg="clicks and the mask channel are not read")
    from nnunet_prompt.serve.interactions import model_capabilities
    caps = model_capabilities(predictor)
    assert caps["bbox2d"] and caps["bbox3d"] and not caps["points"] and not caps["initial_seg"]
    # where the box is, the object logit moves most (the box's region vs. the far corner)
    diff = (out[1][0, 1] - out[1][0, 0]) - (out[0][0, 1] - out[0][0, 0])
    inside = diff[:, 4:patch[1] // 2, 4:patch[2] // 2].abs().mean()
    corner = diff[:, -patch[1] // 4:, -patch[2] // 4:].abs().mean()
    assert float(inside) > float(corner)


def test_resume_with_c(box_trained):
    env = dict(box_trained["env"], NNUNET_PROMPT_DEMO_EPOCHS="2", NNUNET_PROMPT_DEMO_ITERS="2")
    proc = run(box_trained["cmd"] + ["--c"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    ckpt = torch.load(os.path.join(box_trained["folder"], "fold_0", "checkpoint_final.pth"), map_location="cpu",
                      weights_only=False)
    assert ckpt["current_epoch"] == 2 and ckpt["init_args"]["plans"]["nnunet_prompt"]["network"] == \
        {"prompt_channels_used": ["box"]}
    assert "Epoch 1" in proc.stdout and "Epoch 0" not in proc.stdout


def test_boxes_from_labels_reproduce_the_per_slice_components(planned_dataset, tmp_path):
    raw, env = planned_dataset["raw"], planned_dataset["env"]
    exact = tmp_path / "exact.json"
    proc = _boxes_from_labels(env, raw, planned_dataset["id"], exact, "--margin-mm", "0", "-p", PLANS)
    assert proc.returncode == 0, proc.stdout[-3000:]
    widened = tmp_path / "widened.json"
    proc = _boxes_from_labels(env, raw, planned_dataset["id"], widened, "--seed", "3")
    assert proc.returncode == 0, proc.stdout[-3000:]
    a, b = json.load(open(exact)), json.load(open(widened))
    assert set(a) == set(b) and a
    labels = json.load(open(os.path.join(raw, "dataset.json")))["labels"]
    name_of_1 = next(k for k, v in labels.items() if v == 1)
    for case in a:
        img = sitk.ReadImage(os.path.join(raw, "labelsTs", case + ".nii.gz"))
        seg = sitk.GetArrayFromImage(img)
        spacing = np.asarray(img.GetSpacing())  # (2, 2, 3): z is the slice axis, as the plans' transpose_forward
        got = sorted((tuple(int(v) for v in x["min"]), tuple(int(v) for v in x["max"])) for x in a[case][0]["boxes"])
        assert a[case][0]["label"] == name_of_1 and a[case][0]["coordinates"] == "voxel"
        assert got == _per_slice_rectangles(seg == 1, axis_zyx=0)
        # the same components in the same order (slice, then component), each widened
        assert len(b[case][0]["boxes"]) == len(a[case][0]["boxes"])
        size = np.asarray(img.GetSize())
        margins = []
        for t, w in zip(a[case][0]["boxes"], b[case][0]["boxes"]):
            lo, hi, wlo, whi = (np.asarray(v, dtype=int) for v in (t["min"], t["max"], w["min"], w["max"]))
            assert wlo[2] == whi[2] == lo[2], "flat along z"
            m = np.concatenate([lo - wlo, whi - hi])[[0, 1, 3, 4]]  # x, y below and above
            assert (m >= 0).all() and (wlo >= 0).all() and (whi <= size - 1).all()
            assert (m * np.tile(spacing[:2], 2) <= 20 + 1e-6).all(), "at most 20 mm per side"
            margins.append(m)
        assert np.concatenate(margins).max() > 0


def test_predict_with_boxes_from_labels_and_refuse_clicks_and_text(box_trained, tmp_path):
    raw, env = box_trained["raw"], box_trained["env"]
    prompts = tmp_path / "boxes.json"
    assert _boxes_from_labels(env, raw, box_trained["id"], prompts).returncode == 0
    base = [console_script("nnunet-prompt"), "predict", "-i", os.path.join(raw, "imagesTs"), "-d",
            str(box_trained["id"]), "-c", CONFIG, "-f", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"]
    out = tmp_path / "pred"
    proc = run(base + ["-o", str(out), "--prompts", str(prompts)], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert sorted(f[:-7] for f in os.listdir(out) if f.endswith(".nii.gz")) == _cases(raw)

    case = sorted(json.load(open(prompts)))[0]
    for name, key, value, expected in (
            ("with_clicks", "positive_points", lambda p: [p["boxes"][0]["min"]], ["positive_points", "boxes-from-labels"]),
            ("with_text", "text", lambda p: "Left-sided tumour, cT2N0M0.", ["gives text", "TextPromptTrainer"])):
        changed = json.load(open(prompts))
        changed[case][0][key] = value(changed[case][0])
        bad = tmp_path / f"{name}.json"
        bad.write_text(json.dumps(changed))
        proc = run(base + ["-o", str(tmp_path / name), "--prompts", str(bad)], env)
        assert proc.returncode == 2
        assert f"Case '{case}'" in proc.stdout and f"{name}.json" in proc.stdout and "Traceback" not in proc.stdout
        assert all(e in proc.stdout for e in expected), proc.stdout
        assert not (tmp_path / name).exists() or not os.listdir(tmp_path / name)


def test_session_refuses_clicks_and_takes_boxes(box_trained):
    """The interactive session refuses what the box-only network would not read, as `nnunet-prompt predict` does."""
    from nnunet_prompt.inference.session import InteractiveSession
    s = InteractiveSession(box_trained["folder"], fold=0, device="cpu")
    s.set_image(os.path.join(box_trained["raw"], "imagesTs", _cases(box_trained["raw"])[0] + "_0000.nii.gz"))
    with pytest.raises(ValueError, match=r"gives positive_points.*boxes only.*add_box"):
        s.add_point((10, 10, 5))
    with pytest.raises(ValueError, match="gives negative_points"):
        s.add_scribble(np.ones((1, 2, 2), np.uint8), positive=False, offset=(5, 10, 10))
    assert s.add_box((5, 5, 2), (20, 20, 8)).shape == s.image_shape


def test_every_trainable_parameter_gets_a_gradient(planned_dataset, monkeypatch):
    """DDP without find_unused_parameters (as test_ddp_gradients for the other prompt trainers)."""
    from nnunetv2.utilities.file_path_utilities import load_json
    from ddp_harness import as_one_rank_of_two, parameters_without_gradient, prompted_step
    import nnunet_prompt_trainers.BoxPromptTrainer as module
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    pre = os.path.join(planned_dataset["env"]["nnUNet_preprocessed"], planned_dataset["name"])
    trainer = module.BoxPromptTrainer(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=False),
                                      CONFIG, 0, load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))
    trainer.initialize()
    as_one_rank_of_two(trainer)
    dl_train, _ = trainer.get_dataloaders()
    trainer.network.train()
    for empty in (False, True):
        prompted_step(trainer, next(dl_train), "slice_boxes", 1, empty)
        missing = parameters_without_gradient(trainer.network)
        assert not missing, f"empty target {empty}: no gradient for {missing}"

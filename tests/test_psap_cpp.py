"""PSAPTrainer_CPP (CT-SAM3D's cross-patch prompt): patch pairs and L_cross inside nnU-Net's training step,
gradients of every parameter including the CPP head, `nnUNetv2_train --c` resume, and the 26-neighbour
propagation at inference (session and `nnunet-prompt predict --cross-patch`)."""
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import CONFIG, PLANS, run, train_demo_trainer
from nnunet_prompt.inference.cross_patch import CrossPatchPropagator, NoCrossPatchHead, touches_sides
from nnunet_prompt.networks.cross_patch_prompt import CrossPatchPromptNet
from nnunet_prompt.prompts.regions import neighbour_directions, neighbour_regions
from nnunet_prompt.training.cross_patch_training import CrossPatchLoss, pair_geometry, sample_pairs

TRAINER = "PSAPTrainer_CPP_demo"


# ------------------------------------------------------------------------------------------- geometry
def test_26_neighbours_and_their_regions():
    dirs = neighbour_directions(3)
    assert len(dirs) == 26 == len(set(dirs)) and (0, 0, 0) not in dirs
    assert all(set(d) <= {-1, 0, 1} for d in dirs)
    # inside a big image: 26 regions of the same size, shifted by half a patch, all overlapping the centre one
    region = ((16, 32, 32), (32, 64, 64))
    nb = neighbour_regions(region, (64, 128, 128))
    assert len(nb) == 26
    for d, (lo, hi) in nb:
        assert tuple(h - l for l, h in zip(lo, hi)) == (16, 32, 32)
        assert lo == tuple(a + s * p // 2 for a, s, p in zip(region[0], d, (16, 32, 32)))
    # at the image's corner only the 7 neighbours pointing inwards remain; along an axis the patch fills, none
    corner = neighbour_regions(((0, 0, 0), (16, 32, 32)), (64, 128, 128))
    assert len(corner) == 7 and all(min(d) >= 0 for d, _ in corner)
    assert len(neighbour_regions(((0, 0, 0), (16, 32, 32)), (16, 128, 128))) == 3


def test_touches_sides():
    obj = torch.zeros(4, 6, 6, dtype=torch.bool)
    obj[1:3, 2:4, 3:6] = True  # reaches the high-x side only
    assert touches_sides(obj, (0, 0, 1)) and not touches_sides(obj, (0, 0, -1))
    assert not touches_sides(obj, (0, 1, 1)), "a diagonal neighbour needs both sides touched"


def test_training_pairs_overlap_by_half_and_differ():
    crop, shift = pair_geometry((16, 32, 48))
    assert crop == (11, 21, 32) and shift == (5, 11, 16)
    assert pair_geometry((2, 32, 32))[1][0] == 0, "an axis of 2 voxels cannot hold two overlapping crops"
    pairs, crop = sample_pairs(200, (16, 32, 48), torch.Generator().manual_seed(0))
    moved = set()
    for u, v in pairs:
        assert u != v
        for a, (us, vs) in enumerate(zip(u, v)):
            assert 0 <= us and us + crop[a] <= (16, 32, 48)[a] and 0 <= vs and vs + crop[a] <= (16, 32, 48)[a]
            assert abs(us - vs) in (0, shift[a])
        moved.add(tuple(int(np.sign(vs - us)) for us, vs in zip(u, v)))
    assert len(moved) == 26, "every neighbour direction is sampled"


# -------------------------------------------------------------------------------- propagation, deterministic
class _BrightnessHead(torch.nn.Module):
    """Stand-in CPP head for a deterministic test of the propagation: a heatmap peaking (0.9) at the brightest voxel
    of V if V has bright voxels, else 0. (The trained CPP head is exercised with a real model further down.)"""

    def forward(self, u_image, u_prediction, v_image):
        bright = (v_image[:, :1] > 0.5).float()
        return 0.9 * bright * torch.exp(-(v_image[:, :1] - v_image[:, :1].amax((2, 3, 4), keepdim=True)) ** 2)


def _tube_image(shape=(12, 12, 64)):
    image = torch.zeros(1, *shape)
    image[0, 4:8, 4:8, 2:60] = 1.0  # a tube along the last axis, 58 voxels long: more than 3 patches of 16
    image[0, 4:8, 4:8, 30] = 2.0    # its brightest voxel
    return image


def _threshold_segment(image):
    def segment(region, click):
        sl = tuple(slice(a, b) for a, b in zip(*region))
        assert all(a <= c < b for a, c, b in zip(*region[:1], click, region[1])), "the click lies in its patch"
        return torch.where(image[0][sl] > 0.5, 5.0, -5.0)
    return segment


@pytest.mark.parametrize("require_contact", [True, False])
def test_propagation_reaches_the_neighbours_and_covers_the_tube(require_contact):
    image = _tube_image()
    logits = torch.full(image.shape[1:], -10.0)
    first = ((0, 0, 0), (12, 12, 16))
    logits[:, :, :16] = torch.where(image[0, :, :, :16] > 0.5, 5.0, -5.0)
    prop = CrossPatchPropagator(_BrightnessHead(), threshold=0.5, max_patches=27, require_contact=require_contact)
    result = prop.run(image, logits, first, _threshold_segment(image))
    assert len(result.regions) >= 4 and result.regions[0] == first
    assert ((logits > 0) == (image[0] > 0.5)).all(), "the whole tube and nothing else"
    assert all(p >= 0.5 for p in result.peaks)
    # a threshold above the heatmap's peak (0.9): nothing is proposed, the result stays the clicked patch's
    logits2 = torch.full(image.shape[1:], -10.0)
    logits2[:, :, :16] = torch.where(image[0, :, :, :16] > 0.5, 5.0, -5.0)
    assert len(CrossPatchPropagator(_BrightnessHead(), threshold=0.95, require_contact=require_contact).run(
        image, logits2, first, _threshold_segment(image)).regions) == 1
    assert not (logits2[:, :, 16:] > 0).any()


def test_propagation_is_bounded_and_needs_an_object():
    image = _tube_image()
    logits = torch.full(image.shape[1:], -10.0)
    logits[:, :, :16] = torch.where(image[0, :, :, :16] > 0.5, 5.0, -5.0)
    result = CrossPatchPropagator(_BrightnessHead(), max_patches=2).run(image, logits, ((0, 0, 0), (12, 12, 16)),
                                                                        _threshold_segment(image))
    assert len(result.regions) == 2
    empty = torch.full(image.shape[1:], -10.0)  # nothing segmented in the clicked patch: nothing to propagate
    assert len(CrossPatchPropagator(_BrightnessHead()).run(image, empty, ((0, 0, 0), (12, 12, 16)),
                                                           _threshold_segment(image)).regions) == 1
    with pytest.raises(ValueError, match="threshold"):
        CrossPatchPropagator(_BrightnessHead(), threshold=2.0)


def test_cpp_head_takes_any_patch_size():
    cpp = CrossPatchPromptNet(1, features=(4, 8, 16))
    out = cpp(torch.zeros(2, 1, 7, 13, 10), torch.zeros(2, 1, 7, 13, 10), torch.zeros(2, 1, 7, 13, 10))
    assert out.shape == (2, 1, 7, 13, 10)


# ------------------------------------------------------------------------------ training, nnU-Net's code path
def _trainer(planned_dataset, name):
    from nnunetv2.utilities.file_path_utilities import load_json
    import nnunet_prompt_trainers.PSAPTrainer as module
    pre = os.path.join(planned_dataset["env"]["nnUNet_preprocessed"], planned_dataset["name"])
    return getattr(module, name)(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=False), CONFIG, 0,
                                 load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))


def test_cpp_training_steps_reach_every_parameter_including_the_cpp_head(planned_dataset, monkeypatch):
    """A few steps of nnU-Net's own train_step (data loader, augmentation, deep supervision, optimizer) with L_cross
    added; after each step every trainable parameter, the CPP head's included, holds a gradient (DDP)."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = _trainer(planned_dataset, "PSAPTrainer_CPP")
    trainer.initialize()
    net = trainer.network
    assert isinstance(trainer.loss, CrossPatchLoss) and net.cross_patch is not None
    cpp_params = {id(p) for p in net.cross_patch.parameters()}
    assert cpp_params <= {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}, "optimised"
    assert any(k.startswith("cross_patch.") for k in net.state_dict()), "checkpointed with the network"
    # nnU-Net's DDP loss weights (see test_psap.py): the lowest deep-supervision head gets 1e-6, not 0
    w = np.array([1 / 2 ** i for i in range(len(trainer.loss.segmentation_loss.weight_factors))])
    w[-1] = 1e-6
    trainer.loss.segmentation_loss.weight_factors = tuple(w / w.sum())
    dl_train, dl_val = trainer.get_dataloaders()
    net.train()
    before = {k: v.clone() for k, v in net.cross_patch.state_dict().items()}
    for _ in range(3):
        assert np.isfinite(trainer.train_step(next(dl_train))["loss"])
        missing = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
        assert not missing, missing
    assert trainer.loss._count == 3 and trainer.loss.mean_cross_loss() > 0
    assert any(not torch.equal(before[k], v) for k, v in net.cross_patch.state_dict().items()), "the head learns"
    assert trainer.loss.step is None, "validation steps get nnU-Net's loss alone"
    assert np.isfinite(trainer.validation_step(next(dl_val))["loss"])


@pytest.fixture(scope="module")
def cpp_trained(planned_dataset):
    """PSAPTrainer_CPP_demo, 1 epoch of 2 iterations, through `nnUNetv2_train`."""
    return train_demo_trainer(planned_dataset, TRAINER, 2)


def test_nnunetv2_train_resumes_psap_cpp_with_c(cpp_trained):
    """`nnUNetv2_train ... --c` continues from the saved epoch, with the CPP head's weights restored."""
    folder = os.path.join(cpp_trained["folder"], "fold_0")
    first = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert first["current_epoch"] == 1 and any(k.startswith("cross_patch.") for k in first["network_weights"])
    assert "cross-patch prompt loss" in "".join(open(os.path.join(folder, f)).read() for f in os.listdir(folder)
                                                if f.startswith("training_log"))
    proc = run(cpp_trained["cmd"] + ["--c"], dict(cpp_trained["env"], NNUNET_PROMPT_DEMO_EPOCHS="2"))
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "Epoch 1" in proc.stdout and "Epoch 0" not in proc.stdout, "continued from the saved epoch"
    second = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert second["current_epoch"] == 2
    changed = [k for k in first["network_weights"] if k.startswith("cross_patch.") and
               not torch.equal(first["network_weights"][k], second["network_weights"][k])]
    assert changed, "the CPP head trained on in the resumed epoch"


# ------------------------------------------------------------------------------------- inference wiring
def _test_case(raw):
    case = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))[0]
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "labelsTs", case + ".nii.gz")))
    return case, os.path.join(raw, "imagesTs", case + "_0000.nii.gz"), label


def test_session_cross_patch_segments_neighbouring_patches_with_the_models_head(cpp_trained):
    """With the trained model's own CPP head (threshold 0, contact rule off, so a barely trained head still proposes):
    neighbouring patches are segmented with the proposed clicks; undo removes them all."""
    from nnunet_prompt.inference.session import InteractiveSession
    case, image, label = _test_case(cpp_trained["raw"])
    s = InteractiveSession(cpp_trained["folder"], device="cpu", cross_patch=True, cross_patch_threshold=0.0,
                           max_patches=3, cross_patch_require_contact=False)
    s.set_image(image)
    z, y, x = np.argwhere(label > 0).mean(0).round().astype(int)
    # make sure the clicked patch is not empty, whatever a 2-iteration model predicts: a mask prompt first
    s.add_mask(label > 0)
    before = s.mask
    s.add_point((x, y, z), positive=True)
    prop = s.last_propagation
    if s._grid.shape == tuple(s.patch):  # the image is one patch: no neighbour exists
        assert len(prop.regions) == 1
    else:
        assert len(prop.regions) > 1 and len(prop.clicks) == len(prop.regions) - 1 == len(s.proposed_points)
        assert all(r != prop.regions[0] for r in prop.regions[1:])
    np.testing.assert_array_equal(s.undo(), before)
    assert s.proposed_points == []


def test_cross_patch_needs_a_cpp_head(trained):
    from nnunet_prompt.inference.session import InteractiveSession
    with pytest.raises(NoCrossPatchHead, match="PSAPTrainer_CPP"):
        InteractiveSession(trained["folder"], device="cpu", cross_patch=True)


def test_predict_cli_cross_patch(cpp_trained, trained, tmp_path):
    from nnunet_prompt.cli import main
    from nnunet_prompt.io_utils import atomic_write_json
    case, image, label = _test_case(cpp_trained["raw"])
    z, y, x = np.argwhere(label > 0).mean(0).round().astype(int)
    atomic_write_json({case: {"positive_points": [[int(x), int(y), int(z)]]}}, str(tmp_path / "p.json"))
    os.makedirs(tmp_path / "in")
    os.symlink(image, tmp_path / "in" / os.path.basename(image))
    args = ["predict", "-i", str(tmp_path / "in"), "-d", str(cpp_trained["id"]), "-c", CONFIG, "-p", PLANS,
            "--prompts", str(tmp_path / "p.json"), "-device", "cpu", "--disable_tta"]
    main(args + ["-o", str(tmp_path / "out"), "-tr", TRAINER, "--cross-patch", "--cross-patch-threshold", "0"])
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz")))
    assert pred.shape == label.shape
    with pytest.raises(SystemExit) as e:
        main(args + ["-o", str(tmp_path / "out2"), "-tr", "PromptTrainer_demo", "--cross-patch"])
    assert e.value.code == 2 and not os.path.exists(tmp_path / "out2" / f"{case}.nii.gz")


def test_serve_offers_a_click_model_clicks_only(cpp_trained):
    """`nnunet-prompt serve` on PSAP (trained on clicks only): /capabilities does not offer boxes or lassos, a box
    from the real client gets a 400 naming the refusal, and the session goes on serving clicks (with CPP)."""
    import httpx
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession
    from conftest import start_server
    case, image, label = _test_case(cpp_trained["raw"])
    proc, url = start_server(cpp_trained, "--cross-patch")
    try:
        remote = nnInteractiveRemoteInferenceSession(url)
        try:
            assert remote.supported_interactions == {"points": True, "scribble": True, "bbox2d": False,
                                                     "bbox3d": False, "lasso": False}
            img = sitk.ReadImage(image)
            remote.set_image(sitk.GetArrayFromImage(img)[None].astype(np.float32),
                             {"spacing": list(img.GetSpacing()[::-1])})
            buffer = np.zeros(label.shape, np.uint8)
            remote.set_target_buffer(buffer)
            z, y, x = (int(v) for v in np.argwhere(label > 0).mean(0).round())
            with pytest.raises(httpx.HTTPStatusError) as e:
                remote.add_bbox_interaction([[z, z + 1], [y - 2, y + 2], [x - 2, x + 2]], include_interaction=True)
            assert e.value.response.status_code == 400
            assert "does not take 'bbox2d'" in e.value.response.json()["detail"]
            assert not buffer.any(), "a refused box changes nothing"
            assert remote.add_point_interaction([z, y, x], include_interaction=True) is not None
        finally:
            remote.close()
    finally:
        proc.terminate()
        proc.wait(30)

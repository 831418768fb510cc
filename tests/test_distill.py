"""DistillTrainer (AutoSAM Adapter, §3.5, eq. 2): the KD loss, the teacher checks, a training step through nnU-Net's
trainer in this process, and `nnUNetv2_train` followed by plain `nnUNetv2_predict` with the student alone."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import CONFIG, PLANS, console_script, run
from sam_adapter3d_fixtures import (SAM_PLANS, STUDENT, sam3d_plans, teacher_fold,  # noqa: F401
                                    test_trainer_folder, tiny_sam)
from nnunet_prompt.training.distillation import TEACHER_ENV_VAR, DistillationLoss, TeacherError


def _seg_loss():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, 1, 1,
                          dice_class=MemoryEfficientSoftDiceLoss)


def test_kd_loss_is_eq2_and_reduces_to_the_plain_loss_at_lambda_1():
    torch.manual_seed(0)
    out = torch.randn(2, 3, 8, 8, 8)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8)).float()
    teacher = torch.softmax(torch.randn(2, 3, 8, 8, 8), 1)
    plain = _seg_loss()(out, target)
    softmax = lambda x: torch.softmax(x, 1)  # noqa: E731
    loss = DistillationLoss(_seg_loss(), 1.0, softmax)
    loss.teacher_probs = teacher
    assert torch.equal(loss(out, target), plain)
    half = DistillationLoss(_seg_loss(), 0.5, softmax)
    half.teacher_probs = teacher
    mse = (torch.softmax(out, 1) - teacher).square().mean()
    assert torch.allclose(half(out, target), 0.5 * plain + 0.5 * mse)
    half.teacher_probs = torch.softmax(out, 1)  # a teacher that agrees: the MSE term vanishes
    assert torch.allclose(half(out, target), 0.5 * plain)
    half.teacher_probs = None  # validation: nnU-Net's loss alone
    assert torch.equal(half(out, target), plain)
    # deep supervision: the MSE uses the full-resolution output
    ds = DistillationLoss(lambda o, t: o[0].sum() * 0, 0.0, softmax)
    ds.teacher_probs = teacher
    assert torch.allclose(ds([out, out[:, :, ::2, ::2, ::2]], [target, target[:, :, ::2, ::2, ::2]]), mse)
    # nnU-Net's ignore label: those voxels do not count
    ign = DistillationLoss(lambda o, t: torch.zeros(()), 0.0, softmax, ignore_label=3)
    ign.teacher_probs = teacher
    t = target.clone()
    t[:, :, :4] = 3
    keep = (torch.softmax(out, 1) - teacher).square()[:, :, 4:]
    assert torch.allclose(ign(out, t), keep.mean())


def _student(planned_dataset, name, plans=SAM_PLANS):
    from nnunetv2.utilities.file_path_utilities import load_json
    import nnunet_prompt_trainers.DistillTrainer as module
    pre = os.path.join(planned_dataset["env"]["nnUNet_preprocessed"], planned_dataset["name"])
    return getattr(module, name)(dict(load_json(os.path.join(pre, f"{plans}.json")), continue_training=False), CONFIG,
                                 0, load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))


@pytest.fixture
def teacher_env(teacher_fold, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_extTrainer", teacher_fold["env"]["nnUNet_extTrainer"])
    monkeypatch.delenv("NNUNET_PROMPT_SAM_CHECKPOINT", raising=False)  # the teacher's stored reference suffices
    monkeypatch.setenv(TEACHER_ENV_VAR, teacher_fold["fold"])
    return teacher_fold


def test_a_distillation_step_through_nnunets_trainer(sam3d_plans, teacher_env):
    trainer = _student(sam3d_plans, "DistillTrainer")
    trainer.initialize()
    # the student is nnU-Net's planned U-Net, with deep supervision; the teacher is outside its module tree
    assert type(trainer.network).__name__ == "PlainConvUNet" and trainer.enable_deep_supervision
    assert not any(k.startswith("teacher") or "encoder.blocks" in k for k in trainer.network.state_dict())
    assert all(not p.requires_grad for p in trainer.teacher.parameters()) and not trainer.teacher.training
    calls = []
    trainer.teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    dl_train, _ = trainer.get_dataloaders()
    batch = next(dl_train)
    trainer.network.train()
    assert np.isfinite(trainer.train_step(batch)["loss"])
    assert calls == [batch["data"].shape]  # once per batch, on the student's batch
    assert all(p.grad is None for p in trainer.teacher.parameters())
    assert trainer.loss.teacher_probs is None  # not kept after the step (validation uses the plain loss)


def test_teacher_errors_name_the_problem(sam3d_plans, teacher_env, tmp_path, monkeypatch):
    monkeypatch.delenv(TEACHER_ENV_VAR)
    with pytest.raises(TeacherError, match=TEACHER_ENV_VAR):
        _student(sam3d_plans, "DistillTrainer").initialize()
    monkeypatch.setenv(TEACHER_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(TeacherError, match="does not exist"):
        _student(sam3d_plans, "DistillTrainer").initialize()
    monkeypatch.setenv(TEACHER_ENV_VAR, teacher_env["folder"])  # the model folder, not a fold
    with pytest.raises(TeacherError, match="fold_0"):
        _student(sam3d_plans, "DistillTrainer").initialize()
    # other plans: a student on the default (narrow) plans has another patch size than the teacher
    monkeypatch.setenv(TEACHER_ENV_VAR, teacher_env["fold"])
    with pytest.raises(TeacherError, match="patch_size"):
        _student(sam3d_plans, "DistillTrainer", plans=PLANS).initialize()
    # another dataset: a copy of the teacher whose plans name another dataset
    other = tmp_path / "Other__copy"
    shutil.copytree(teacher_env["folder"], other, ignore=shutil.ignore_patterns("validation", "*.png"))
    plans = json.load(open(other / "plans.json"))
    plans["dataset_name"] = "Dataset992_Other"
    (other / "plans.json").write_text(json.dumps(plans))
    monkeypatch.setenv(TEACHER_ENV_VAR, str(other / "fold_0" / "checkpoint_final.pth"))
    with pytest.raises(TeacherError, match="Dataset992_Other"):
        _student(sam3d_plans, "DistillTrainer").initialize()


@pytest.fixture(scope="module")
def student_fold(teacher_fold):
    env = dict(teacher_fold["env"], **{TEACHER_ENV_VAR: teacher_fold["fold"]})
    cmd = [console_script("nnUNetv2_train"), "991", CONFIG, "0", "-tr", STUDENT, "-p", SAM_PLANS, "-device", "cpu"]
    proc = run(cmd, env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    folder = os.path.dirname(teacher_fold["folder"]) + f"/{STUDENT}__{SAM_PLANS}__{CONFIG}"
    return {"folder": folder, "env": env, "log": proc.stdout}


def test_the_distilled_student_predicts_with_plain_nnunetv2_predict(student_fold, tmp_path):
    folder = student_fold["folder"]
    ckpt = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    plans = json.load(open(os.path.join(folder, "plans.json")))
    kwargs = plans["configurations"][CONFIG]["architecture"]["arch_kwargs"]
    # the narrow student: widths halved in the plans saved with it, and its weights are exactly that U-Net's
    assert kwargs["features_per_stage"][0] * 2 == json.load(open(os.path.join(
        student_fold["env"]["nnUNet_preprocessed"], "Dataset991_TinyHN", f"{SAM_PLANS}.json")))[
        "configurations"][CONFIG]["architecture"]["arch_kwargs"]["features_per_stage"][0]
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    unet = get_network_from_plans(plans["configurations"][CONFIG]["architecture"]["network_class_name"], kwargs,
                                  ["conv_op", "norm_op", "dropout_op", "nonlin"], 1, 2, deep_supervision=True)
    assert set(ckpt["network_weights"]) == set(unet.state_dict())
    record = plans["nnunet_prompt"]["distillation"]  # the teacher is recorded in the plans, for --c
    assert record["lambda"] == 0.5 and record["teacher_checkpoint"].endswith("checkpoint_final.pth")
    assert not os.path.exists(os.path.join(folder, "distill_teacher.json"))
    # plain nnUNetv2_predict, with neither the teacher nor the SAM file
    env = dict(student_fold["env"])
    env.pop(TEACHER_ENV_VAR)
    env.pop("NNUNET_PROMPT_SAM_CHECKPOINT")
    raw = os.path.join(env["nnUNet_raw"], "Dataset991_TinyHN")
    out = tmp_path / "pred"
    proc = run([console_script("nnUNetv2_predict"), "-i", os.path.join(raw, "imagesTs"), "-o", str(out), "-d", "991",
                "-c", CONFIG, "-f", "0", "-tr", STUDENT, "-p", SAM_PLANS, "-device", "cpu", "-npp", "1", "-nps", "1",
                "--disable_tta"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    cases = sorted(f[:-12] for f in os.listdir(os.path.join(raw, "imagesTs")))
    assert sorted(f[:-7] for f in os.listdir(out) if f.endswith(".nii.gz")) == cases


def test_every_student_parameter_gets_a_gradient_on_one_ddp_rank(sam3d_plans, teacher_env):
    """DDP (-num_gpus) runs without find_unused_parameters: one rank's distillation step (one case, nnU-Net's DDP
    deep-supervision weights; ddp_harness) reaches every student parameter; the teacher is outside the DDP module."""
    from ddp_harness import as_one_rank_of_two, parameters_without_gradient
    trainer = _student(sam3d_plans, "DistillTrainer")
    trainer.initialize()
    as_one_rank_of_two(trainer)
    dl_train, _ = trainer.get_dataloaders()
    trainer.network.train()
    batch = next(dl_train)
    assert batch["data"].shape[0] == 1
    assert np.isfinite(trainer.train_step(batch)["loss"])
    missing = parameters_without_gradient(trainer.network)
    assert not missing, missing


def test_the_student_resumes_with_c_from_its_recorded_teacher(student_fold):
    """`nnUNetv2_train ... --c` of the distilled student without the teacher variable: the teacher recorded in the
    plans is found again, and training continues at the next epoch of the same schedule."""
    env = dict(student_fold["env"], NNUNET_PROMPT_DEMO_EPOCHS="2")
    env.pop(TEACHER_ENV_VAR)
    cmd = [console_script("nnUNetv2_train"), "991", CONFIG, "0", "-tr", STUDENT, "-p", SAM_PLANS, "-device", "cpu",
           "--c"]
    proc = run(cmd, env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    ckpt = torch.load(os.path.join(student_fold["folder"], "fold_0", "checkpoint_final.pth"), map_location="cpu",
                      weights_only=False)
    assert ckpt["current_epoch"] == 2
    assert "Epoch 1" in proc.stdout and "Epoch 0" not in proc.stdout

"""Fixtures of the AutoSAM Adapter tests (issue 8): a tiny SAM ViT saved in the official format, plans with a
32³ patch, and a SAMAdapter3DTrainer fold trained by `nnUNetv2_train` (the DistillTrainer's teacher)."""
import os

import pytest

from conftest import CONFIG, console_script, run

SAM_PLANS = "nnUNetPlansSAM3D_32"
TEACHER = "SAMAdapter3DTrainer_testNoMirror"
STUDENT = "DistillTrainer_narrow_testNoMirror"

# the demo schedules without test-time mirroring, so that nnU-Net's final validation (run after every
# nnUNetv2_train, also after --c) takes 4 instead of 32 forward passes per case on the CI's 2 cores
_TEST_TRAINERS = """
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import nnUNetTrainerNoMirroring
from nnunet_prompt_trainers.DistillTrainer import DistillTrainer_narrow_demo
from nnunet_prompt_trainers.SAMAdapter3DTrainer import SAMAdapter3DTrainer_demo


class SAMAdapter3DTrainer_testNoMirror(SAMAdapter3DTrainer_demo, nnUNetTrainerNoMirroring):
    pass


class DistillTrainer_narrow_testNoMirror(DistillTrainer_narrow_demo, nnUNetTrainerNoMirroring):
    pass
"""


@pytest.fixture(scope="session")
def test_trainer_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("test_trainers")
    (folder / "sam_adapter3d_test_trainers.py").write_text(_TEST_TRAINERS)
    return str(folder)


def tiny_sam_config(**overrides):
    """A 4-block ViT (width 32, 8-voxel patches, 2x2 windows, global blocks 1 and 3): SAM's layout, tiny."""
    from transformers import SamVisionConfig
    kwargs = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=8, image_size=64, mlp_dim=64,
                  output_channels=16, window_size=2, global_attn_indexes=[1, 3], initializer_range=0.02)
    kwargs.update(overrides)
    return SamVisionConfig(**kwargs)


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory) -> str:
    import torch
    from transformers.models.sam.modeling_sam import SamVisionEncoder
    from nnunet_prompt.sam.checkpoint import save_sam_checkpoint
    torch.manual_seed(0)
    encoder = SamVisionEncoder(tiny_sam_config())
    with torch.no_grad():  # non-zero tables, as in a trained SAM, so that tests see them act
        encoder.pos_embed.normal_(0, 0.1)
        for layer in encoder.layers:
            layer.attn.rel_pos_h.normal_(0, 0.1)
            layer.attn.rel_pos_w.normal_(0, 0.1)
    path = str(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")
    save_sam_checkpoint(path, encoder)
    return path


@pytest.fixture(scope="session")
def sam3d_plans(planned_dataset):
    """SAMAdapter3DPlanner_32 plans of Dataset991 (they share the default plans' preprocessed data)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
    from nnunet_prompt_planners.sam_adapter3d_planner import SAMAdapter3DPlanner_32
    _, name = plan_experiment_dataset(planned_dataset["id"], SAMAdapter3DPlanner_32)
    assert name == SAM_PLANS
    return planned_dataset


def sam_env(planned_dataset, tiny_sam, trainer_folder, **extra):
    env = dict(planned_dataset["env"], NNUNET_PROMPT_DEMO_EPOCHS="1", NNUNET_PROMPT_DEMO_ITERS="2",
               nnUNet_extTrainer=os.pathsep.join([planned_dataset["env"]["nnUNet_extTrainer"], trainer_folder]),
               NNUNET_PROMPT_SAM_CHECKPOINT=tiny_sam,
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", planned_dataset["env"]["OMP_NUM_THREADS"]))
    env.pop("NNUNET_PROMPT_DISTILL_TEACHER", None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def teacher_fold(sam3d_plans, tiny_sam, test_trainer_folder):
    """SAMAdapter3DTrainer (demo schedule, 1 epoch of 2 iterations) through `nnUNetv2_train`, final validation
    included."""
    trainer = TEACHER
    env = sam_env(sam3d_plans, tiny_sam, test_trainer_folder)
    cmd = [console_script("nnUNetv2_train"), str(sam3d_plans["id"]), CONFIG, "0", "-tr", trainer, "-p", SAM_PLANS,
           "-device", "cpu"]
    proc = run(cmd, env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    folder = os.path.join(env["nnUNet_results"], sam3d_plans["name"], f"{trainer}__{SAM_PLANS}__{CONFIG}")
    return {"folder": folder, "fold": os.path.join(folder, "fold_0"), "cmd": cmd, "env": env, "log": proc.stdout}

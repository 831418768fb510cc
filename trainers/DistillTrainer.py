"""DistillTrainer: nnU-Net's planned U-Net distilled from a trained SAMAdapter3DTrainer fold (seed 003, §3.5,
eq. 2: λ·(Dice + CE) + (1 − λ)·MSE to the teacher's probabilities, λ = 0.5). The teacher is named by
NNUNET_PROMPT_DISTILL_TEACHER (a fold folder or a checkpoint in one); the student is a plain nnU-Net model
(`nnUNetv2_predict -tr DistillTrainer`). Logic: nnunet_prompt.training.distill_trainer and .distillation.
"""
from nnunet_prompt.training.distill_trainer import DistillTrainerBase
from nnunet_prompt.training.schedules import DemoSchedule, epochs


class DistillTrainer(DistillTrainerBase):
    pass


class DistillTrainer_narrow(DistillTrainerBase):
    """A lighter student: the planned U-Net with every feature width halved."""
    width_divisor = 2


DistillTrainer_1epoch = epochs(DistillTrainer, 1, "DistillTrainer_1epoch")
DistillTrainer_5epochs = epochs(DistillTrainer, 5, "DistillTrainer_5epochs")
DistillTrainer_50epochs = epochs(DistillTrainer, 50, "DistillTrainer_50epochs")
DistillTrainer_250epochs = epochs(DistillTrainer, 250, "DistillTrainer_250epochs")


class DistillTrainer_demo(DemoSchedule, DistillTrainer):
    """The CPU demo's short schedule."""


class DistillTrainer_narrow_demo(DemoSchedule, DistillTrainer_narrow):
    """The CPU demo's short schedule, narrower student."""

"""DistillTrainer: nnU-Net's planned U-Net distilled from a trained SAMAdapter3DTrainer fold (AutoSAM Adapter, §3.5,
eq. 2: λ·(Dice + CE) + (1 − λ)·MSE to the teacher's probabilities, λ = 0.5). The teacher is named by
NNUNET_PROMPT_DISTILL_TEACHER (a fold folder or a checkpoint in one); the student is a plain nnU-Net model
(`nnUNetv2_predict -tr DistillTrainer`). Logic: nnunet_prompt.training.distill_trainer and .distillation.
"""
from nnunet_prompt.training.distill_trainer import DistillTrainerBase
from nnunet_prompt.training.schedules import DemoSchedule, FixedEpochs


class DistillTrainer(DistillTrainerBase):
    pass


class DistillTrainer_narrow(DistillTrainerBase):
    """A lighter student: the planned U-Net with every feature width halved."""
    width_divisor = 2


class DistillTrainer_1epoch(FixedEpochs, DistillTrainer):
    fixed_num_epochs = 1


class DistillTrainer_5epochs(FixedEpochs, DistillTrainer):
    fixed_num_epochs = 5


class DistillTrainer_50epochs(FixedEpochs, DistillTrainer):
    fixed_num_epochs = 50


class DistillTrainer_250epochs(FixedEpochs, DistillTrainer):
    fixed_num_epochs = 250


class DistillTrainer_demo(DemoSchedule, DistillTrainer):
    """The CPU demo's short schedule."""


class DistillTrainer_narrow_demo(DemoSchedule, DistillTrainer_narrow):
    """The CPU demo's short schedule, narrower student."""

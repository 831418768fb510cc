"""The plain nnU-Net baseline on the CPU demo's schedule: nnUNetTrainer with only the schedule changed,
so that `nnunet-prompt demo` compares PromptTrainer_demo against it on equal terms."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_prompt.training.schedules import DemoSchedule


class nnUNetTrainer_demo(DemoSchedule, nnUNetTrainer):
    pass

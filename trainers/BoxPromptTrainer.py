"""BoxPromptTrainer: the MedSAM study's "nnU-Net w/ box", nnU-Net's planned U-Net with one extra input channel
holding a box around every object on every slice (0-20 mm margin). Logic:
nnunet_prompt.training.box_prompt_trainer and nnunet_prompt.interaction.slice_boxes.

Short-schedule variants follow nnU-Net's naming (nnUNetTrainer_5epochs etc.).
"""
from nnunet_prompt.training.box_prompt_trainer import BoxPromptTrainerBase
from nnunet_prompt.training.schedules import DemoSchedule, FixedEpochs


class BoxPromptTrainer(BoxPromptTrainerBase):
    pass


class BoxPromptTrainer_1epoch(FixedEpochs, BoxPromptTrainer):
    fixed_num_epochs = 1


class BoxPromptTrainer_5epochs(FixedEpochs, BoxPromptTrainer):
    fixed_num_epochs = 5


class BoxPromptTrainer_50epochs(FixedEpochs, BoxPromptTrainer):
    fixed_num_epochs = 50


class BoxPromptTrainer_250epochs(FixedEpochs, BoxPromptTrainer):
    fixed_num_epochs = 250


class BoxPromptTrainer_demo(DemoSchedule, BoxPromptTrainer):
    """The CPU demo's schedule (see DemoSchedule)."""

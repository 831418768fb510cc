"""PromptTrainer: prompts as extra input channels of nnU-Net's own planned U-Net (the MedSAM study's box
channel, with CT-SAM3D's iterative click training). Logic: nnunet_prompt.training.prompt_trainer.

Short-schedule variants follow nnU-Net's naming (nnUNetTrainer_5epochs etc.).
"""
from nnunet_prompt.interaction.simulation import SimulationPolicy
from nnunet_prompt.training.prompt_trainer import PromptTrainerBase
from nnunet_prompt.training.schedules import DemoSchedule, FixedEpochs


class PromptTrainer(PromptTrainerBase):
    pass


class PromptTrainer_1epoch(FixedEpochs, PromptTrainer):
    fixed_num_epochs = 1


class PromptTrainer_5epochs(FixedEpochs, PromptTrainer):
    fixed_num_epochs = 5


class PromptTrainer_50epochs(FixedEpochs, PromptTrainer):
    fixed_num_epochs = 50


class PromptTrainer_250epochs(FixedEpochs, PromptTrainer):
    fixed_num_epochs = 250


class PromptTrainer_demo(DemoSchedule, PromptTrainer):
    """The CPU demo's schedule (see DemoSchedule), with at most 2 interaction rounds per batch: on 2 CPU
    cores every refinement round costs a forward pass plus the simulated user (~0.3 s)."""
    simulation_policy = SimulationPolicy(num_rounds=2)

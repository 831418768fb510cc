"""PSAPTrainer: clicks and the previous mask modulate the instance norm of every decoder stage of nnU-Net's
planned U-Net (seed 001, CT-SAM3D, PSAP eq. 2); the image alone enters the encoder.
Logic: nnunet_prompt.training.psap_trainer and nnunet_prompt.networks.psap.

Short-schedule variants follow nnU-Net's naming (nnUNetTrainer_5epochs etc.).
"""
from nnunet_prompt.interaction.simulation import SimulationPolicy
from nnunet_prompt.training.psap_trainer import PSAPTrainerBase
from nnunet_prompt.training.schedules import DemoSchedule, epochs


class PSAPTrainer(PSAPTrainerBase):
    pass


PSAPTrainer_1epoch = epochs(PSAPTrainer, 1, "PSAPTrainer_1epoch")
PSAPTrainer_5epochs = epochs(PSAPTrainer, 5, "PSAPTrainer_5epochs")
PSAPTrainer_50epochs = epochs(PSAPTrainer, 50, "PSAPTrainer_50epochs")
PSAPTrainer_250epochs = epochs(PSAPTrainer, 250, "PSAPTrainer_250epochs")


class PSAPTrainer_demo(DemoSchedule, PSAPTrainer):
    """The CPU demo's schedule (see DemoSchedule) with at most 2 interaction rounds per batch, as PromptTrainer_demo."""
    simulation_policy = SimulationPolicy(num_rounds=2, initial_types=("clicks",))

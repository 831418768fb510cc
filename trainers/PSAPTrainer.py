"""PSAPTrainer: clicks and the previous mask modulate the instance norm of every decoder stage of nnU-Net's
planned U-Net (CT-SAM3D, PSAP eq. 2); the image alone enters the encoder.
Logic: nnunet_prompt.training.psap_trainer and nnunet_prompt.networks.psap.

Short-schedule variants follow nnU-Net's naming (nnUNetTrainer_5epochs etc.).
"""
from nnunet_prompt.interaction.simulation import SimulationPolicy
from nnunet_prompt.training.psap_trainer import PSAPTrainerBase
from nnunet_prompt.training.schedules import DemoSchedule, FixedEpochs


class PSAPTrainer(PSAPTrainerBase):
    pass


class PSAPTrainer_1epoch(FixedEpochs, PSAPTrainer):
    fixed_num_epochs = 1


class PSAPTrainer_5epochs(FixedEpochs, PSAPTrainer):
    fixed_num_epochs = 5


class PSAPTrainer_50epochs(FixedEpochs, PSAPTrainer):
    fixed_num_epochs = 50


class PSAPTrainer_250epochs(FixedEpochs, PSAPTrainer):
    fixed_num_epochs = 250


class PSAPTrainer_demo(DemoSchedule, PSAPTrainer):
    """The CPU demo's schedule (see DemoSchedule) with at most 2 interaction rounds per batch, as PromptTrainer_demo."""
    simulation_policy = SimulationPolicy(num_rounds=2, initial_types=("clicks",))


class PSAPTrainer_CPP(PSAPTrainer):
    """PSAPTrainer with CT-SAM3D's cross-patch prompt head, trained with L_cross beside nnU-Net's loss; at inference
    `nnunet-prompt predict --cross-patch` and InteractiveSession(cross_patch=True) propagate clicks to neighbouring
    patches with it."""
    cross_patch_prompt = True


class PSAPTrainer_CPP_5epochs(FixedEpochs, PSAPTrainer_CPP):
    fixed_num_epochs = 5


class PSAPTrainer_CPP_50epochs(FixedEpochs, PSAPTrainer_CPP):
    fixed_num_epochs = 50


class PSAPTrainer_CPP_250epochs(FixedEpochs, PSAPTrainer_CPP):
    fixed_num_epochs = 250


class PSAPTrainer_CPP_demo(DemoSchedule, PSAPTrainer_CPP):
    """PSAPTrainer_CPP on the CPU demo's schedule, with at most 2 interaction rounds per batch, as PSAPTrainer_demo."""
    simulation_policy = SimulationPolicy(num_rounds=2, initial_types=("clicks",))

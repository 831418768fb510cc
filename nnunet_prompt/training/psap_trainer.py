"""The PSAP trainer base (seed 001, CT-SAM3D): PromptTrainerBase with a PSAP-modulated decoder.

Only the network and the simulated user's first round differ from PromptTrainer: nnU-Net's planned
U-Net sees the image alone and the clicks and previous mask modulate every decoder stage
(``nnunet_prompt.networks.psap``); the first interaction round gives clicks only (seed 001, no box).
Target selection, interaction rounds (5 per batch by default, drawn 1..5 as in PromptTrainer), timing
and the prompted final validation (with clicks) are PromptTrainerBase's.
"""
from __future__ import annotations

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_prompt.interaction.simulation import SimulationPolicy
from nnunet_prompt.networks.psap import PSAPUNet
from nnunet_prompt.training.prompt_trainer import NUM_OUTPUTS, PromptTrainerBase


class PSAPTrainerBase(PromptTrainerBase):
    simulation_policy = SimulationPolicy(initial_types=("clicks",))
    validation_prompt_type = "clicks"
    psap_hidden_channels: int = 32
    psap_residual_gamma: bool = True  # (1 + gamma) * IN(X) + beta; False: eq. 2 as printed

    @classmethod
    def build_prompt_network(cls, configuration_manager, num_image_channels: int,
                             enable_deep_supervision: bool = True) -> torch.nn.Module:
        unet = get_network_from_plans(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_image_channels, NUM_OUTPUTS, allow_init=True, deep_supervision=enable_deep_supervision)
        return PSAPUNet(unet, cls.prompt_encoding.num_channels, hidden_channels=cls.psap_hidden_channels,
                        residual_gamma=cls.psap_residual_gamma)

"""The box-channel trainer base (the MedSAM study's "nnU-Net w/ box"): nnU-Net's planned U-Net with the image
channels plus ONE channel holding a box around every object on every slice (``interaction.slice_boxes``).

PromptTrainerBase with three changes:

* the simulated user gives only per-object, per-slice boxes (0-20 mm margin), once: no clicks, no rounds;
* the final validation prompts each label of each case the same way (``validation_prompt_type``);
* the network reads only the box channel. The model keeps the common input layout (image channels followed by
  the four channels of ``PromptEncoding``, recorded as usual), so ``nnunet-prompt predict``, the session and the
  server work unchanged; a forward pre-hook passes [image channels, box] on to nnU-Net's own network, built with
  num_image + 1 input channels (its ``decoder.deep_supervision`` stays where nnU-Net looks for it). The record's
  ``network["prompt_channels_used"]`` says so, so the model is rebuilt from its plans alone, and prediction
  refuses clicks or masks it would ignore.
"""
from __future__ import annotations

import torch

from nnunet_prompt.interaction.simulation import SimulationPolicy
from nnunet_prompt.model_record import record_from_plans
from nnunet_prompt.networks.contract import select_input_channels_hook, used_prompt_channels
from nnunet_prompt.prompts.encoding import PromptEncoding
from nnunet_prompt.training.prompt_trainer import PromptTrainerBase


class BoxPromptTrainerBase(PromptTrainerBase):
    simulation_policy = SimulationPolicy(num_rounds=1, initial_types=("slice_boxes",))
    validation_prompt_type = "slice_boxes"
    prompt_channels_used = ("box",)

    @classmethod
    def network_options(cls) -> dict:
        return dict(super().network_options(), prompt_channels_used=list(cls.prompt_channels_used))

    @classmethod
    def build_prompt_network(cls, plans_manager, configuration_manager, num_image_channels: int,
                             num_prompt_channels: int, options: dict,
                             enable_deep_supervision: bool = True) -> torch.nn.Module:
        return super().build_prompt_network(plans_manager, configuration_manager, num_image_channels,
                                            len(options["prompt_channels_used"]), options, enable_deep_supervision)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        # registered after the base's hook that pads image-only input (plain nnUNetv2_predict): pad, then select
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        record = record_from_plans(plans_manager.plans)
        channels = PromptEncoding.from_dict(record.prompt_encoding).channels
        missing = [c for c in used_prompt_channels(record) if c not in channels]
        if missing:
            raise ValueError(f"the record's prompt_channels_used {missing} are not channels of its encoding {channels}")
        keep = list(range(num_input_channels)) + [num_input_channels + channels.index(c)
                                                  for c in used_prompt_channels(record)]
        network.register_forward_pre_hook(select_input_channels_hook(keep))
        return network

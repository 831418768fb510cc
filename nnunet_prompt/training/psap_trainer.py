"""The PSAP trainer base (CT-SAM3D): PromptTrainerBase with a PSAP-modulated decoder.

Only the network and the simulated user's first round differ from PromptTrainer: nnU-Net's planned
U-Net sees the image alone and the clicks and previous mask modulate every decoder stage
(``nnunet_prompt.networks.psap``); the first interaction round gives clicks only (CT-SAM3D, no box).
Target selection, interaction rounds (5 per batch by default, drawn 1..5 as in PromptTrainer), timing
and the prompted final validation (with clicks) are PromptTrainerBase's.

``cross_patch_prompt = True`` (PSAPTrainer_CPP) adds CT-SAM3D's cross-patch prompt head to the network and
its loss L_cross to nnU-Net's loss on every training step (``nnunet_prompt.training.cross_patch_training``).
"""
from __future__ import annotations

from typing import List

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_prompt.interaction.simulation import SimulationPolicy
from nnunet_prompt.networks.contract import NUM_OUTPUTS, unwrap
from nnunet_prompt.networks.cross_patch_prompt import CrossPatchPromptNet
from nnunet_prompt.networks.psap import PSAPUNet
from nnunet_prompt.training.cross_patch_training import CrossPatchLoss, CrossPatchStep, sample_pairs
from nnunet_prompt.training.prompt_trainer import PromptTrainerBase, fold_offset
from nnunet_prompt.training.recorded_trainer import rank_seed


class PSAPTrainerBase(PromptTrainerBase):
    simulation_policy = SimulationPolicy(initial_types=("clicks",))
    validation_prompt_type = "clicks"
    psap_hidden_channels: int = 32
    psap_residual_gamma: bool = True  # (1 + gamma) * IN(X) + beta; False: eq. 2 as printed
    # cross-patch prompt (CPP): a light U-Net head trained beside the segmentation network
    cross_patch_prompt: bool = False
    cross_patch_features = (8, 16, 32)
    cross_patch_sigma_mm: float = 5.0   # width of the Gaussian at the target's centroid (CT-SAM3D gives none)
    cross_patch_weight: float = 1.0     # L = L_local + L_cross (Algorithm 1, line 6)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # pair sampling has its own CPU generator: it must not shift the simulated user's random stream
        # (one stream per DDP rank, kept in checkpoints as the simulator's)
        self._pair_generator = torch.Generator().manual_seed(rank_seed(self.simulation_seed + 7919 * fold_offset(self.fold)))

    def random_generators(self):
        return dict(super().random_generators(), pair_sampling=self._pair_generator)

    @classmethod
    def network_options(cls) -> dict:
        return dict(super().network_options(), psap_hidden_channels=cls.psap_hidden_channels,
                    psap_residual_gamma=cls.psap_residual_gamma, cross_patch_prompt=cls.cross_patch_prompt,
                    cross_patch_features=list(cls.cross_patch_features))

    @classmethod
    def build_prompt_network(cls, plans_manager, configuration_manager, num_image_channels: int,
                             num_prompt_channels: int, options: dict,
                             enable_deep_supervision: bool = True) -> torch.nn.Module:
        unet = get_network_from_plans(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_image_channels, NUM_OUTPUTS, allow_init=True, deep_supervision=enable_deep_supervision)
        cpp = (CrossPatchPromptNet(num_image_channels, tuple(options["cross_patch_features"]), unet.encoder.conv_op)
               if options["cross_patch_prompt"] else None)
        return PSAPUNet(unet, num_prompt_channels, hidden_channels=options["psap_hidden_channels"],
                        residual_gamma=options["psap_residual_gamma"], cross_patch=cpp)

    # ------------------------------------------------------------- cross-patch prompt
    def _build_loss(self):
        loss = super()._build_loss()
        return CrossPatchLoss(loss) if self.cross_patch_prompt else loss

    def train_step(self, batch: dict) -> dict:
        if not self.cross_patch_prompt:
            return super().train_step(batch)
        image = batch['data'].to(self.device, non_blocking=True)  # image channels: prompts are appended later
        pairs, crop = sample_pairs(image.shape[0], image.shape[2:], self._pair_generator)
        self.loss.step = CrossPatchStep(unwrap(self.network).cross_patch, image, pairs, crop,
                                        self.configuration_manager.spacing, self.cross_patch_sigma_mm,
                                        self.cross_patch_weight)
        try:
            return super().train_step(batch)
        finally:
            self.loss.step = None  # validation steps use nnU-Net's loss alone

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        if self.cross_patch_prompt:
            mean = self.loss.mean_cross_loss()
            if mean is not None:
                self.print_to_log_file(f"cross-patch prompt loss (L_cross) {mean:.5f}")
            self.loss.reset_log()

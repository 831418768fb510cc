"""The AutoSAM Adapter trainer base (§3.2-3.4, 3.6): nnU-Net's trainer with the 3D-adapted SAM network.

Not a prompt trainer: the Auto Prompt Generator makes the prompt, so the network takes nnU-Net's image
channels and outputs the dataset's classes, and plain ``nnUNetv2_predict`` predicts with it. nnU-Net keeps
planning, data loading, augmentation, the loop and the loss (``DC_and_CE_loss``, eq. 1); this class changes:

* the network (``nnunet_prompt.networks.auto_sam_adapter``), built from the SAM checkpoint named by
  ``NNUNET_PROMPT_SAM_CHECKPOINT`` (``nnunet_prompt.sam.checkpoint``);
* deep supervision off (the network has one full-resolution output, as in AutoSAM Adapter);
* AdamW (lr 5e-4, weight decay 1e-5, §4) on the trainable parameters only, with nnU-Net's poly decay;
* what the model needs at inference goes into the plans record (``nnunet_prompt.model_record``, in the
  ``plans.json`` beside the trained model, read back by nnU-Net's predictor when it rebuilds the network): the
  SAM base reference and the ViT's shape (``sam``) and the network options (``network``). The frozen SAM
  weights are then left out of every checkpoint and reloaded from the SAM file.

Where the SAM file comes from: ``NNUNET_PROMPT_SAM_CHECKPOINT`` for a fresh training; the reference in the
record for ``--c`` and prediction (the variable again only for a moved file, checked to be the same encoder).
``sam_random_init`` variants need no file (random frozen ViT, experiments).
"""
from __future__ import annotations

import os

import torch
from transformers import SamVisionConfig

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_prompt.model_record import record_from_plans
from nnunet_prompt.networks.contract import unwrap
from nnunet_prompt.networks.auto_sam_adapter import AutoSAMAdapter3D, AutoSAMOptions, exclude_from_checkpoints
from nnunet_prompt.sam.adapter3d import SAMEncoder3D
from nnunet_prompt.sam.checkpoint import (ENV_VAR, SAMBaseReference, image_encoder_state_dict,
                                          infer_vision_config, load_sam_image_encoder, random_sam_image_encoder,
                                          read_sam_checkpoint, sam_vision_config)
from nnunet_prompt.training.recorded_trainer import RecordedTrainerMixin
from nnunet_prompt.training.schedules import trainable_adamw_poly

_VISION_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_channels", "patch_size", "mlp_dim",
                "output_channels", "window_size", "global_attn_indexes", "qkv_bias", "use_rel_pos")
RANDOM_INIT_HINT = ("For experiments without pretrained weights train the random-initialisation variant "
                    "(-tr SAMAdapter3DTrainer_randomInit).")


def sam_base_record(random_init: bool) -> dict:
    """The record's ``sam`` field for a fresh training: the SAM base reference (None for random init) and the
    ViT's shape."""
    path = os.environ.get(ENV_VAR)
    if random_init:  # a named file only gives the architecture here; without one, ViT-B's
        config = infer_vision_config(image_encoder_state_dict(read_sam_checkpoint(path))) if path \
            else sam_vision_config("vit_b")
        ref = None
    else:
        ref = SAMBaseReference.from_environment(RANDOM_INIT_HINT)
        config = infer_vision_config(image_encoder_state_dict(read_sam_checkpoint(ref.path)))
    return {"base": ref.as_dict() if ref else None, "vision_config": {k: getattr(config, k) for k in _VISION_KEYS}}


def build_auto_sam_network(sam: dict, options: dict, patch_size, num_input_channels: int,
                           num_classes: int) -> AutoSAMAdapter3D:
    """sam, options: the record's ``sam`` and ``network`` fields."""
    if len(patch_size) != 3:
        raise ValueError(f"SAMAdapter3DTrainer needs a 3D configuration (3d_fullres), got patch size {list(patch_size)}")
    in_plane = int(patch_size[1])
    if sam.get("base"):
        ref = SAMBaseReference(**sam["base"]).relocated()
        encoder2d, _ = load_sam_image_encoder(ref.path, image_size=in_plane)
    else:
        vc = dict(sam["vision_config"])
        config = SamVisionConfig(**vc, image_size=in_plane, mlp_ratio=vc["mlp_dim"] / vc["hidden_size"],
                                 initializer_range=0.02)  # transformers' default 1e-10 would give all-zero weights
        encoder2d = random_sam_image_encoder(config)
    options = AutoSAMOptions(**options)
    encoder = SAMEncoder3D(encoder2d, patch_size, options.window_size, options.adapter_ratio)
    network = AutoSAMAdapter3D(encoder, num_input_channels, num_classes, options)
    if sam.get("base"):  # the frozen weights come back from the SAM file, not from nnU-Net's checkpoints
        exclude_from_checkpoints(network, network.frozen_parameter_names())
    return network


class SAMAdapter3DTrainerBase(RecordedTrainerMixin, nnUNetTrainer):
    autosam_options: AutoSAMOptions = AutoSAMOptions()
    sam_random_init: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = 5e-4
        self.weight_decay = 1e-5

    @classmethod
    def network_options(cls) -> dict:
        return dict(super().network_options(), **cls.autosam_options.as_dict())

    def record_fields(self) -> dict:
        return dict(super().record_fields(), sam=sam_base_record(self.sam_random_init))

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        record = record_from_plans(plans_manager.plans)
        return build_auto_sam_network(record.sam, record.network, configuration_manager.patch_size,
                                      num_input_channels, num_output_channels)

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # one output, no deep-supervision heads

    def configure_optimizers(self):
        return trainable_adamw_poly(self)

    def on_train_start(self):
        super().on_train_start()
        net = unwrap(self.network)
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        total = sum(p.numel() for p in net.parameters())
        record = self.record
        self.print_to_log_file(f"AutoSAM Adapter: {trainable / 1e6:.2f}M of {total / 1e6:.2f}M parameters train; "
                               f"SAM base: {record.sam['base']['path'] if record.sam['base'] else 'random init'}; "
                               f"options: {record.network}")

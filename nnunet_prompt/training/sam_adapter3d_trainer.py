"""The AutoSAM Adapter trainer base (seed 003, §3.2-3.4, 3.6): nnU-Net's trainer with the 3D-adapted SAM network.

Not a prompt trainer: the Auto Prompt Generator makes the prompt, so the network takes nnU-Net's image
channels and outputs the dataset's classes, and plain ``nnUNetv2_predict`` predicts with it. nnU-Net keeps
planning, data loading, augmentation, the loop and the loss (``DC_and_CE_loss``, eq. 1); this class changes:

* the network (``nnunet_prompt.networks.auto_sam_adapter``), built from the SAM checkpoint named by
  ``NNUNET_PROMPT_SAM_CHECKPOINT`` (``nnunet_prompt.sam.checkpoint``);
* deep supervision off (the network has one full-resolution output, as in the seed);
* AdamW (lr 5e-4, weight decay 1e-5, §4) on the trainable parameters only, with nnU-Net's poly decay;
* what the model needs at inference goes into the plans (``plans.json`` beside the trained model, read back by
  nnU-Net's predictor when it rebuilds the network): the SAM base reference, the ViT's shape and the network
  options. The frozen SAM weights are then left out of every checkpoint and reloaded from the SAM file.

Where the SAM file comes from: ``NNUNET_PROMPT_SAM_CHECKPOINT`` when set (training; or a moved file at
inference, checked to be the same encoder), else the reference stored with the trained model (``--c``,
prediction), else a clear error. ``sam_random_init`` variants need no file (random frozen ViT, experiments).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
from torch.optim import AdamW
from transformers import SamVisionConfig

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_prompt.networks.auto_sam_adapter import AutoSAMAdapter3D, AutoSAMOptions, exclude_from_checkpoints
from nnunet_prompt.sam.adapter3d import SAMEncoder3D
from nnunet_prompt.sam.checkpoint import (ENV_VAR, SAMBaseReference, SAMCheckpointError, image_encoder_state_dict,
                                          infer_vision_config, load_sam_image_encoder, random_sam_image_encoder,
                                          read_sam_checkpoint, sam_vision_config)

PLANS_KEY = "nnunet_prompt_sam_adapter3d"  # the model spec inside plans.json
_VISION_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_channels", "patch_size", "mlp_dim",
                "output_channels", "window_size", "global_attn_indexes", "qkv_bias", "use_rel_pos")
RANDOM_INIT_HINT = ("For experiments without pretrained weights train the random-initialisation variant "
                    "(-tr SAMAdapter3DTrainer_randomInit).")


def model_spec(random_init: bool, options: AutoSAMOptions, stored: Optional[dict] = None) -> dict:
    """What rebuilds the network: SAM base reference (None for random init), ViT shape, network options."""
    if random_init:
        path = os.environ.get(ENV_VAR)
        # a named file only gives the architecture here; without one, ViT-B's
        config = infer_vision_config(image_encoder_state_dict(read_sam_checkpoint(path))) if path \
            else sam_vision_config("vit_b")
        ref = None
    elif os.environ.get(ENV_VAR) or not (stored and stored.get("sam_base")):
        ref = SAMBaseReference.from_environment(RANDOM_INIT_HINT)
        config = infer_vision_config(image_encoder_state_dict(read_sam_checkpoint(ref.path)))
    else:
        ref = SAMBaseReference(**stored["sam_base"]).relocated()
        return dict(stored, sam_base=ref.as_dict(), options=options.as_dict())
    vision = {k: getattr(config, k) for k in _VISION_KEYS}
    return {"sam_base": ref.as_dict() if ref else None, "vision_config": vision, "options": options.as_dict()}


def stored_spec(model_folder: str) -> Optional[dict]:
    path = os.path.join(model_folder, "plans.json")
    if not os.path.isfile(path):
        return None
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f).get(PLANS_KEY)


def build_auto_sam_network(spec: dict, patch_size, num_input_channels: int, num_classes: int) -> AutoSAMAdapter3D:
    if len(patch_size) != 3:
        raise ValueError(f"SAMAdapter3DTrainer needs a 3D configuration (3d_fullres), got patch size {list(patch_size)}")
    in_plane = int(patch_size[1])
    if spec.get("sam_base"):
        ref = SAMBaseReference(**spec["sam_base"]).relocated()
        encoder2d, _ = load_sam_image_encoder(ref.path, image_size=in_plane)
    else:
        vc = dict(spec["vision_config"])
        config = SamVisionConfig(**vc, image_size=in_plane, mlp_ratio=vc["mlp_dim"] / vc["hidden_size"],
                                 initializer_range=0.02)  # transformers' default 1e-10 would give all-zero weights
        encoder2d = random_sam_image_encoder(config)
    options = AutoSAMOptions(**spec["options"])
    encoder = SAMEncoder3D(encoder2d, patch_size, options.window_size, options.adapter_ratio)
    network = AutoSAMAdapter3D(encoder, num_input_channels, num_classes, options)
    if spec.get("sam_base"):  # the frozen weights come back from the SAM file, not from nnU-Net's checkpoints
        exclude_from_checkpoints(network, network.frozen_parameter_names())
    return network


class SAMAdapter3DTrainerBase(nnUNetTrainer):
    network_options: AutoSAMOptions = AutoSAMOptions()
    sam_random_init: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = 5e-4
        self.weight_decay = 1e-5
        # plans_manager.plans is the dict nnU-Net saves as plans.json beside the model (and in init_args)
        self.plans_manager.plans[PLANS_KEY] = model_spec(self.sam_random_init, self.network_options,
                                                         stored_spec(self.output_folder_base))

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        spec = plans_manager.plans.get(PLANS_KEY)
        if spec is None:
            raise SAMCheckpointError(f"the plans hold no '{PLANS_KEY}' entry: this model was not trained by a "
                                     f"SAMAdapter3DTrainer (its plans.json is written when training starts)")
        return build_auto_sam_network(spec, configuration_manager.patch_size, num_input_channels, num_output_channels)

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # one output, no deep-supervision heads

    def configure_optimizers(self):
        params = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = AdamW(params, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def on_train_start(self):
        super().on_train_start()
        net = self.network.module if self.is_ddp else self.network
        net = getattr(net, "_orig_mod", net)
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        total = sum(p.numel() for p in net.parameters())
        spec = self.plans_manager.plans[PLANS_KEY]
        self.print_to_log_file(f"AutoSAM Adapter: {trainable / 1e6:.2f}M of {total / 1e6:.2f}M parameters train; "
                               f"SAM base: {spec['sam_base']['path'] if spec['sam_base'] else 'random init'}; "
                               f"options: {spec['options']}")

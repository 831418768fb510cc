"""SAM trainers (SAM-RT, the MedSAM study): a frozen SAM ViT encoder with LoRA inside nnU-Net's training.

nnU-Net keeps data loading, augmentation, the loss, the loop and checkpoint files. ``SAMTrainerMixin`` changes:

* the network (``nnunet_prompt.sam.network``), built from the SAM base that ``NNUNET_PROMPT_SAM_CHECKPOINT``
  names (recorded in the plans record's ``sam`` field; ``--c`` and inference find it there), for the
  square 2D patch of a ``SAM2DPlanner`` configuration; the LoRA / GaRPA / ProViCMA options are the record's
  ``network`` field;
* no deep supervision (one full-resolution output): nnU-Net's loss is built without its wrapper and the
  dataloader gives one target;
* AdamW on the trainable parameters only (SAM-RT: lr 5e-3, betas 0.9/0.999, weight decay 0.1; nnU-Net's
  poly decay per epoch instead of SAM-RT's 250-iteration warm-up);
* checkpoints hold only the trainable weights (the network's ``state_dict``); nnU-Net's plans in them (``init_args``)
  hold the record with the SAM base reference;
* SeqLoRA stage 2 (``seqlora`` in the options): when training starts fresh, the stage-1 model named by
  ``NNUNET_PROMPT_SEQLORA_FROM`` (its checkpoint file, trained on another dataset with other labels) hands
  over its LoRA weights (then frozen) and every other weight whose name and shape match (decoder layers but
  not its class layer when the label counts differ). nnU-Net's ``-pretrained_weights`` cannot do this: it
  requires every weight of the new network to be in the file.

``SAMLoRATrainerBase``: SAM-RT's first stage, k semantic classes, no prompts (plain nnU-Net prediction).
``SAMPromptTrainerBase``: PromptTrainerBase (interaction simulation, ``nnunet-prompt predict``, the session,
prompted final validation) with the SAM network; a prompt addresses one label, so k = 2 (background, object).
On 2D patches the simulated user works slice by slice: one box (0-20 mm margin) and/or clicks per target per slice.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Optional

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_prompt.model_record import record_from_plans
from nnunet_prompt.networks.contract import NUM_OUTPUTS, unwrap
from nnunet_prompt.sam.checkpoint import SAMCheckpointError
from nnunet_prompt.sam.model_info import SAMModelInfo
from nnunet_prompt.sam.network import SAMNetworkOptions, SAMSegmentationNet, build_sam_network
from nnunet_prompt.training.prompt_trainer import PromptTrainerBase
from nnunet_prompt.training.recorded_trainer import RecordedTrainerMixin
from nnunet_prompt.training.schedules import DemoSchedule, trainable_adamw_poly

SEQLORA_ENV_VAR = "NNUNET_PROMPT_SEQLORA_FROM"


def check_sam_patch(configuration_manager) -> int:
    patch = list(configuration_manager.patch_size)
    if len(patch) != 2 or patch[0] != patch[1] or patch[0] % 16:
        raise SAMCheckpointError(
            f"SAM trainers need a 2D configuration with a square patch that is a multiple of 16, got patch {patch}. "
            f"Plan one with `nnunet-prompt plan DATASET -pl SAM2DPlanner` and train its 2d configuration with "
            f"-p nnUNetPlansSAM512.")
    return int(patch[0])


class SAMTrainerMixin(RecordedTrainerMixin):
    sam_options: SAMNetworkOptions = SAMNetworkOptions()
    sam_random_init: bool = False  # *_randomInit variants: no checkpoint file, random frozen encoder (experiments)
    sam_initial_lr: float = 5e-3
    sam_weight_decay: float = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = self.sam_initial_lr
        self.weight_decay = self.sam_weight_decay

    # ------------------------------------------------------------------ network
    @classmethod
    def _build_sam(cls, plans_manager, configuration_manager, num_image_channels: int, num_outputs: int,
                   num_prompt_channels: int) -> SAMSegmentationNet:
        size = check_sam_patch(configuration_manager)
        record = record_from_plans(plans_manager.plans)
        info = SAMModelInfo.from_dict(record.sam).relocated()
        options = SAMNetworkOptions(**{k: record.network[k] for k in SAMNetworkOptions.__dataclass_fields__})
        return build_sam_network(info, size, num_outputs,
                                 configuration_manager.normalization_schemes,
                                 plans_manager.foreground_intensity_properties_per_channel,
                                 num_prompt_channels, options)

    @classmethod
    def network_options(cls) -> dict:
        return dict(super().network_options(), **asdict(cls.sam_options))

    def record_fields(self) -> dict:
        return dict(super().record_fields(), sam=SAMModelInfo.from_environment(self.sam_random_init).to_dict())

    @property
    def sam_info(self) -> SAMModelInfo:
        return SAMModelInfo.from_dict(self.record.sam)

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # the SAM network has one output

    def initialize(self):
        check_sam_patch(self.configuration_manager)  # before the record asks for a SAM file
        super().initialize()

    def configure_optimizers(self):
        return trainable_adamw_poly(self, betas=(0.9, 0.999))

    # ------------------------------------------------------------- bookkeeping
    def on_train_start(self):
        super().on_train_start()
        n_train = sum(p.numel() for p in self.network.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.network.parameters())
        self.print_to_log_file(f"SAM network: {n_train} trainable of {n_all} parameters; base "
                               f"{self.sam_info.base.path if self.sam_info.base else 'random initialisation'}")
        if self.sam_options.seqlora and self.current_epoch == 0:
            self.hand_over_stage1()

    # ------------------------------------------------------------------ SeqLoRA
    def hand_over_stage1(self, path: Optional[str] = None) -> dict:
        """Load a stage-1 model's weights into this stage-2 network (see module doc); returns what was taken."""
        path = path or os.environ.get(SEQLORA_ENV_VAR)
        if not path:
            raise SAMCheckpointError(
                f"{type(self).__name__} is SeqLoRA's second stage: set {SEQLORA_ENV_VAR} to the stage-1 model's "
                f"checkpoint (e.g. .../SAMLoRATrainer__nnUNetPlansSAM512__2d/fold_0/checkpoint_final.pth).")
        if not os.path.isfile(path):
            raise SAMCheckpointError(f"{SEQLORA_ENV_VAR}={path!r} does not exist")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        weights = ckpt.get("network_weights")
        if weights is None or not any(".lora_A.stage1." in k for k in weights):
            raise SAMCheckpointError(f"{path!r} is not a SAM LoRA model checkpoint (no stage-1 LoRA weights)")
        net = unwrap(self.network)
        own = net.state_dict()
        fp = weights.get("sam_base_fingerprint")
        if fp is not None and not torch.equal(fp, own["sam_base_fingerprint"].cpu()):
            raise SAMCheckpointError(f"the stage-1 model {path!r} was trained on another SAM base than "
                                     f"{self.sam_info.base.path if self.sam_info.base else 'this random one'}")
        taken = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
        missing_lora = [k for k in own if ".lora_" in k and ".stage1." in k and k not in taken]
        if missing_lora:
            raise SAMCheckpointError(f"stage-1 LoRA of {path!r} does not fit this network ({missing_lora[:3]}...): "
                                     f"same SAM base and LoRA rank are required")
        net.load_state_dict(taken, strict=False)
        self.print_to_log_file(f"SeqLoRA: took {len(taken)} tensors from stage 1 ({path}), "
                               f"{sum('.lora_' in k for k in taken)} of them LoRA (frozen); "
                               f"not taken (new or other shape): {sorted(set(own) - set(taken))}")
        return taken


class SAMLoRATrainerBase(SAMTrainerMixin, nnUNetTrainer):
    """SAM-RT's first stage: k semantic masks (the dataset's classes), no prompts."""

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        return cls._build_sam(plans_manager, configuration_manager, num_input_channels, num_output_channels, 0)


class SliceWisePromptsMixin:
    """The simulated user on 2D patches (SAM trainers, MedSAMTrainer): mix in front of PromptTrainerBase."""

    def simulate_prompts(self, data: torch.Tensor, target: torch.Tensor, rounds: int) -> torch.Tensor:
        if data.ndim == 4:  # a 2D patch is a volume one slice thick for the (3D) simulator: boxes per slice
            return super().simulate_prompts(data[:, :, None], target[:, :, None], rounds)[:, :, 0]
        return super().simulate_prompts(data, target, rounds)

    def _forward_prediction(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5 and x.shape[2] == 1:
            return super()._forward_prediction(x[:, :, 0])[:, None]
        return super()._forward_prediction(x)


class SAMPromptTrainerBase(SAMTrainerMixin, SliceWisePromptsMixin, PromptTrainerBase):
    @classmethod
    def build_prompt_network(cls, plans_manager, configuration_manager, num_image_channels: int,
                             num_prompt_channels: int, options: dict,
                             enable_deep_supervision: bool = True) -> torch.nn.Module:
        return cls._build_sam(plans_manager, configuration_manager, num_image_channels, NUM_OUTPUTS,
                              num_prompt_channels)


class SAMDemoSchedule(DemoSchedule):
    """DemoSchedule (NNUNET_PROMPT_DEMO_EPOCHS x NNUNET_PROMPT_DEMO_ITERS, AdamW) without amsgrad."""
    demo_amsgrad = False

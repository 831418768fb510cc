"""MedSAM fine-tuning inside nnU-Net (the MedSAM study, its "SAM finetune"): SAM's image encoder, prompt encoder and
mask decoder (``nnunet_prompt.sam.medsam_network.MedSAMNetwork``) trained on one box per object per slice.

nnU-Net keeps data loading, augmentation, the loop and checkpoint files; PromptTrainerBase keeps the simulated user,
prompted validation, ``nnunet-prompt predict`` and the session. ``MedSAMTrainerBase`` changes:

* the network: ``MedSAMNetwork`` for the square 2D patch of a ``SAM2DPlanner`` configuration, rebuilt from the plans
  record alone: ``sam`` holds the SamConfig, the base file (``SAMBaseReference`` of ``NNUNET_PROMPT_SAM_CHECKPOINT``;
  None for ``*_randomInit``), the pixel normalisation; ``network`` holds the fine-tuning mode and that only the box
  channel is read. Checkpoints hold every weight (full fine-tuning changes them all), so a trained model predicts
  without its base file; the base file is read only when it is there (a fresh training requires it);
* prompts: ``slice_boxes`` (one box per 8-connected object per slice, each side widened by 0-20 mm), one round;
* loss: nnU-Net's Dice + cross-entropy on the 2-class logits plus the IoU-prediction loss (``iou_prediction_loss``:
  the MSE between each box's predicted IoU and the IoU of its thresholded mask with the target inside its box);
* no deep supervision; AdamW lr 3e-4, weight decay 0.01 (MedSAM's); ``ReduceLROnPlateau`` (0.9, patience 5) on the
  validation loss, which is the soft Dice loss (the study keeps the epoch of lowest validation Dice loss), and the
  lowest-validation-loss checkpoint as ``checkpoint_best.pth``
  (``nnunet_prompt.training.plateau_schedule``);
* DDP (no ``find_unused_parameters``): a step without any box (background patches) still reaches every trainable
  parameter, through a zero-weighted term (``touch_all``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import autocast

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.utilities.helpers import dummy_context

from nnunet_prompt.interaction.simulation import SimulationPolicy
from nnunet_prompt.model_record import record_from_plans
from nnunet_prompt.sam.checkpoint import SAMCheckpointError
from nnunet_prompt.sam import medsam_record
from nnunet_prompt.sam.medsam_network import FINETUNE_MODES
from nnunet_prompt.training.plateau_schedule import ValidationLossPlateau, adamw_plateau
from nnunet_prompt.training.prompt_trainer import PromptTrainerBase
from nnunet_prompt.training.sam_trainer import SliceWisePromptsMixin, check_sam_patch
from nnunet_prompt.training.schedules import DemoSchedule



# ------------------------------------------------------------------------------------------------ IoU loss
def box_target_iou(box_sample: torch.Tensor, boxes: torch.Tensor, box_logits: torch.Tensor,
                   target: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N,) IoU of each box's thresholded mask (logit > 0, whole patch) with its object: the target inside the box.

    box_sample (N,) sample index, boxes (N, 4) inclusive (x0, y0, x1, y1) patch pixels (x: last axis), box_logits
    (N, S, S), target (B, S, S) boolean object, valid (B, S, S) pixels that count (nnU-Net's ignore label: not).
    Empty union: IoU 1 (nothing to find, nothing found). No gradient: it is the regression target."""
    with torch.no_grad():
        n, h, w = box_logits.shape
        ys = torch.arange(h, device=boxes.device).view(1, h, 1)
        xs = torch.arange(w, device=boxes.device).view(1, 1, w)
        b = boxes.long()
        inside = ((xs >= b[:, 0, None, None]) & (xs <= b[:, 2, None, None]) &
                  (ys >= b[:, 1, None, None]) & (ys <= b[:, 3, None, None]))
        gt = target[box_sample] & inside
        pred = box_logits > 0
        if valid is not None:
            pred, gt = pred & valid[box_sample], gt & valid[box_sample]
        inter = (pred & gt).flatten(1).sum(1).float()
        union = (pred | gt).flatten(1).sum(1).float()
        return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def iou_prediction_loss(boxes_out, target: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MedSAM's IoU loss: mean over the batch's boxes of (predicted IoU - actual IoU)^2; 0 without boxes."""
    iou_pred = boxes_out.iou_predictions
    if iou_pred.numel() == 0:
        return iou_pred.sum() * 0.0
    actual = box_target_iou(boxes_out.box_sample, boxes_out.boxes, boxes_out.box_logits, target, valid)
    return torch.mean((iou_pred.float() - actual) ** 2)


def touch_all(network: torch.nn.Module) -> torch.Tensor:
    """0 * (one element of every trainable parameter): adds nothing to the loss, but gives every parameter a (zero)
    gradient, which DDP without find_unused_parameters needs in a step where no box reached the prompt path."""
    return sum(p.view(-1)[0] * 0.0 for p in network.parameters() if p.requires_grad)


class MedSAMSteps(nnUNetTrainer):
    """nnUNetTrainer's train_step / validation_step (2.8.1) with MedSAM's loss: the network is asked for its
    per-box outputs and the IoU-prediction loss is added to nnU-Net's Dice + CE. Sits between PromptTrainerBase
    (which prompts the batch, then calls these) and nnUNetTrainer in the MRO."""
    iou_loss_weight: float = 1.0  # MedSAM: Dice + CE + IoU loss, equal weights

    def medsam_loss(self, logits: torch.Tensor, boxes_out, target: torch.Tensor) -> dict:
        seg = self.loss(logits, target)
        ignore = self.label_manager.ignore_label
        valid = None if ignore is None else target[:, 0] != ignore
        iou = iou_prediction_loss(boxes_out, target[:, 0] == 1, valid)
        total = seg + self.iou_loss_weight * iou
        if boxes_out.iou_predictions.numel() == 0:
            total = total + touch_all(self.network)
        return {"loss": total, "seg_loss": seg.detach(), "iou_loss": iou.detach(),
                "dice_loss": self._dice_loss(logits, target, valid).detach()}

    def _dice_loss(self, logits: torch.Tensor, target: torch.Tensor, valid) -> torch.Tensor:
        """The soft Dice term of nnU-Net's Dice + CE (its ``dc``, the negative soft Dice): the MedSAM study keeps the
        epoch of lowest validation Dice loss."""
        if valid is None:
            return self.loss.dc(logits, target)
        return self.loss.dc(logits, torch.where(valid[:, None], target, 0), loss_mask=valid[:, None])

    def _batch_on_device(self, batch: dict):
        target = batch['target']
        target = target[0] if isinstance(target, list) else target  # no deep supervision: one scale
        return batch['data'].to(self.device, non_blocking=True), target.to(self.device, non_blocking=True)

    def _forward_with_boxes(self, data, target):
        with autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context():
            out = self.network(data, return_boxes=True)  # MedSAMOutput: logits and per-box outputs
            losses = self.medsam_loss(out.logits, out, target)
        logits = out.logits
        return logits, losses

    def train_step(self, batch: dict) -> dict:
        data, target = self._batch_on_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        _, losses = self._forward_with_boxes(data, target)
        l = losses["loss"]
        if self.grad_scaler is not None:
            self.grad_scaler.scale(l).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            l.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {'loss': l.detach().cpu().numpy()}

    def validation_step(self, batch: dict) -> dict:
        data, target = self._batch_on_device(batch)
        output, losses = self._forward_with_boxes(data, target)
        del data
        # nnU-Net's online pseudo Dice (softmax labels; prompt training has two outputs, no regions)
        axes = [0] + list(range(2, output.ndim))
        seg = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
        seg.scatter_(1, output.argmax(1)[:, None], 1)
        mask = None
        if self.label_manager.has_ignore_label:
            mask = (target != self.label_manager.ignore_label).float()
            target = torch.where(target == self.label_manager.ignore_label, torch.zeros_like(target), target)
        tp, fp, fn, _ = get_tp_fp_fn_tn(seg, target, axes=axes, mask=mask)
        # the validation loss nnU-Net logs, and the plateau schedule and the best checkpoint follow: the Dice loss
        return {'loss': losses["dice_loss"].cpu().numpy(), 'tp_hard': tp.detach().cpu().numpy()[1:],
                'fp_hard': fp.detach().cpu().numpy()[1:], 'fn_hard': fn.detach().cpu().numpy()[1:]}


class MedSAMTrainerBase(ValidationLossPlateau, SliceWisePromptsMixin, PromptTrainerBase, MedSAMSteps):
    simulation_policy = SimulationPolicy(num_rounds=1, initial_types=("slice_boxes",))
    validation_prompt_type = "slice_boxes"
    finetune: str = "full"
    medsam_pixel_norm: str = "unit"      # MedSAM's files take [0, 1] pixels; official SAM files: "imagenet"
    sam_random_init: bool = False        # *_randomInit: no file, a random SAM of NNUNET_PROMPT_SAM_RANDOM_CONFIG
    medsam_initial_lr: float = 3e-4
    medsam_weight_decay: float = 0.01
    plateau_factor: float = 0.9
    plateau_patience: int = 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = self.medsam_initial_lr
        self.weight_decay = self.medsam_weight_decay

    # ------------------------------------------------------------------ network
    @classmethod
    def network_options(cls) -> dict:
        if cls.finetune not in FINETUNE_MODES:
            raise ValueError(f"{cls.__name__}.finetune {cls.finetune!r}: choose one of {FINETUNE_MODES}")
        return dict(super().network_options(), finetune=cls.finetune, prompt_channels_used=["box"])

    def record_fields(self) -> dict:
        return dict(super().record_fields(),
                    sam=medsam_record.from_environment(self.sam_random_init, self.medsam_pixel_norm,
                                                       check_sam_patch(self.configuration_manager)))

    @classmethod
    def build_prompt_network(cls, plans_manager, configuration_manager, num_image_channels: int,
                             num_prompt_channels: int, options: dict,
                             enable_deep_supervision: bool = True) -> torch.nn.Module:
        check_sam_patch(configuration_manager)
        record = record_from_plans(plans_manager.plans)
        return medsam_record.build_network(record.sam, options["finetune"],
                                           configuration_manager.normalization_schemes,
                                           plans_manager.foreground_intensity_properties_per_channel)

    def check_resumed_record(self, record) -> None:
        super().check_resumed_record(record)
        if (record.sam or {}).get("kind") != medsam_record.KIND:
            raise SAMCheckpointError(f"{type(self).__name__} resumes MedSAM models only; this checkpoint's record "
                                     f"was written by {record.trainer}.")

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # one output

    def initialize(self):
        check_sam_patch(self.configuration_manager)  # before the record asks for a SAM file
        super().initialize()

    def configure_optimizers(self):
        return adamw_plateau(self, self.plateau_factor, self.plateau_patience)

    def on_train_start(self):
        super().on_train_start()
        n_train = sum(p.numel() for p in self.network.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.network.parameters())
        base = self.record.sam.get("base")
        self.print_to_log_file(f"MedSAM network ({self.finetune} fine-tuning): {n_train} trainable of {n_all} "
                               f"parameters; base {base['path'] if base else 'random initialisation'}; pixel "
                               f"normalisation {self.record.sam['pixel_norm']}")


class MedSAMDemoSchedule(DemoSchedule):
    """DemoSchedule's epochs and iterations (NNUNET_PROMPT_DEMO_EPOCHS x NNUNET_PROMPT_DEMO_ITERS, 4 validation
    iterations) with MedSAM's own optimizer, learning rate and plateau schedule."""
    initial_lr_demo = 3e-4

    def configure_optimizers(self):
        return adamw_plateau(self, self.plateau_factor, self.plateau_patience)


class ZeroEpochs:
    """No training: ``nnUNetv2_train ... -tr MedSAMTrainer_zeroShot`` writes the base file's weights as
    checkpoint_final.pth and runs the prompted final validation (zero-shot results on a fold's validation cases)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 0

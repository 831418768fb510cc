"""DistillTrainer base (AutoSAM Adapter, §3.5, eq. 2): nnU-Net's planned U-Net as the student of a trained teacher fold.

The student is exactly the network nnU-Net plans (``nnUNetTrainer``'s own ``build_network_architecture``; the
``width_divisor`` variants narrow its feature widths in the plans copy saved beside the student), so the
distilled model is a plain nnU-Net model: ``nnUNetv2_predict -tr DistillTrainer`` predicts with it, no teacher
and no SAM file needed. Everything else is nnU-Net's training (deep supervision included); per training batch
the teacher predicts once, without gradients, and ``DistillationLoss`` mixes nnU-Net's Dice + CE with the MSE
to the teacher's probabilities. Validation losses are nnU-Net's plain loss (no teacher).

The teacher: ``NNUNET_PROMPT_DISTILL_TEACHER`` (nnUNetv2_train has no free arguments) names a trained fold
folder or a checkpoint in one. Its checkpoint and λ go into the plans record (``distillation``), so ``--c``
resumes with the same teacher without the variable.
"""
from __future__ import annotations

import os

import torch
from torch import autocast

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context

from nnunet_prompt.model_record import PLANS_KEY, put_record
from nnunet_prompt.training.distillation import (TEACHER_ENV_VAR, DistillationLoss, TeacherError, load_teacher,
                                                 narrowed_plans, resolve_teacher, teacher_probabilities)
from nnunet_prompt.training.recorded_trainer import RecordedTrainerMixin


class DistillTrainerBase(RecordedTrainerMixin, nnUNetTrainer):
    distill_lambda: float = 0.5  # eq. 2's λ (AutoSAM Adapter's default)
    width_divisor: int = 1       # >1: a narrower student (feature widths / width_divisor)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        if self.width_divisor > 1:
            plans = narrowed_plans(plans, configuration, self.width_divisor)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.teacher = None
        self.teacher_checkpoint = None

    @classmethod
    def network_options(cls) -> dict:
        # the student is nnU-Net's network of the (narrowed) plans; recorded for reading
        return dict(super().network_options(), width_divisor=cls.width_divisor)

    def record_fields(self) -> dict:
        _, checkpoint = resolve_teacher(os.environ.get(TEACHER_ENV_VAR))
        return dict(super().record_fields(), distillation={"teacher_checkpoint": checkpoint,
                                                           "lambda": self.distill_lambda})

    def check_resumed_record(self, record) -> None:
        super().check_resumed_record(record)
        if record.distillation is None:
            raise TeacherError("The checkpoint's record names no teacher.")

    def initialize(self):
        if not self.was_initialized:
            if PLANS_KEY not in self.plans_manager.plans:  # fresh training (--c adopted the checkpoint's record)
                put_record(self.plans_manager.plans, self.fresh_record())
            path = self.record.distillation["teacher_checkpoint"]
            # before nnU-Net builds the student: a wrong teacher fails in seconds, not after unpacking data
            self.teacher, self.teacher_checkpoint = load_teacher(path, self.plans_manager, self.configuration_manager,
                                                                 self.dataset_json, self.device)
        super().initialize()

    def _build_loss(self):
        return DistillationLoss(super()._build_loss(), self.distill_lambda, self.label_manager.apply_inference_nonlin,
                                self.label_manager.ignore_label)

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"distilling from {self.teacher_checkpoint} with λ = {self.distill_lambda}")

    def train_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        with autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context():
            self.loss.teacher_probs = teacher_probabilities(self.teacher, data, self.label_manager.apply_inference_nonlin)
        try:
            return super().train_step(dict(batch, data=data))
        finally:
            self.loss.teacher_probs = None

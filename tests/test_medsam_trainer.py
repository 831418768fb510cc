"""MedSAMTrainer and zero-shot MedSAM (issue 16): the plateau schedule and best-validation-loss checkpoint, the
IoU-prediction loss, and (with the MedSAM network: tiny SAM files the test builds and saves through the real saving
code) training through nnUNetv2_train, --c, prediction, zero-shot prediction."""
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunet_prompt.training.medsam_trainer import box_target_iou, iou_prediction_loss, touch_all
from nnunet_prompt.training.plateau_schedule import (BEST_VAL_LOSS_KEY, SCHEDULER_KEY, ValidationLossPlateau,
                                                     adamw_plateau)


# ------------------------------------------------------------------------------------------- IoU loss
def _boxes_out(logits, boxes, sample, iou_pred):
    return SimpleNamespace(box_logits=logits, boxes=torch.tensor(boxes), box_sample=torch.tensor(sample),
                           iou_predictions=iou_pred)


def test_box_target_iou_counts_the_target_inside_the_box_only():
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    target[0, 1:3, 1:3] = True     # object A (4 px) in box 0
    target[0, 5:7, 5:7] = True     # object B: outside box 0
    target[1, 0:4, 4:8] = True
    logits = torch.full((2, 8, 8), -1.0)
    logits[0, 1:3, 1:4] = 1.0      # 6 px predicted, 4 of them A -> IoU 4/6
    logits[1, 0:4, 4:8] = 1.0      # exact -> 1
    iou = box_target_iou(torch.tensor([0, 1]), torch.tensor([[0, 0, 3, 3], [4, 0, 7, 3]]), logits, target)
    assert torch.allclose(iou, torch.tensor([4 / 6, 1.0]))


def test_iou_loss_is_the_mse_to_the_actual_iou_and_drives_the_iou_head():
    target = torch.zeros(1, 8, 8, dtype=torch.bool)
    target[0, 2:4, 2:4] = True
    logits = torch.full((1, 8, 8), -1.0)
    logits[0, 2:4, 2:4] = 1.0
    head = torch.nn.Parameter(torch.tensor([0.25]))
    loss = iou_prediction_loss(_boxes_out(logits, [[0, 0, 7, 7]], [0], head), target)
    assert math.isclose(loss.item(), 0.75 ** 2, rel_tol=1e-6)
    loss.backward()
    assert head.grad is not None and head.grad.item() < 0  # pushed up towards IoU 1
    empty = iou_prediction_loss(_boxes_out(torch.zeros(0, 8, 8), torch.zeros(0, 4).long().tolist(), [],
                                           torch.zeros(0, requires_grad=True)), target)
    assert empty.item() == 0


def test_touch_all_gives_every_trainable_parameter_a_zero_gradient():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net[1].bias.requires_grad_(False)
    touch_all(net).backward()
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters() if p.requires_grad)
    assert net[1].bias.grad is None


# ------------------------------------------------------------------ plateau schedule, best checkpoint
class _Logger:
    def __init__(self):
        self.values = {k: [] for k in ("epoch_end_timestamps", "epoch_start_timestamps", "train_losses",
                                       "val_losses", "dice_per_class_or_region", "lrs")}

    def log(self, key, value, epoch):
        self.values[key].append(value)

    def get_value(self, key, step):
        return self.values[key][step]

    def plot_progress_png(self, folder):
        pass


class _Base:
    def nnunet_checkpoint(self):
        return {"network_weights": {}}

    def restore_extra_state(self, checkpoint):
        pass


class _Trainer(ValidationLossPlateau, _Base):
    """ValidationLossPlateau on a stand-in trainer: records which checkpoints on_epoch_end writes."""

    def __init__(self, folder):
        self.network = torch.nn.Linear(1, 1)
        self.initial_lr, self.weight_decay = 3e-4, 0.01
        self.optimizer, self.lr_scheduler = adamw_plateau(self, 0.9, 1)
        self.logger, self.output_folder, self.local_rank = _Logger(), str(folder), 0
        self.current_epoch, self.num_epochs, self.save_every = 0, 100, 50
        self.saved = []

    def print_to_log_file(self, *args, **kwargs):
        pass

    def save_checkpoint(self, filename):
        self.saved.append((self.current_epoch, os.path.basename(filename), self.nnunet_checkpoint()))

    def epoch(self, val_loss):
        self.on_train_epoch_start()
        for k, v in (("epoch_start_timestamps", 0.0), ("train_losses", 1.0), ("val_losses", val_loss),
                     ("dice_per_class_or_region", [0.5])):
            self.logger.log(k, v, self.current_epoch)
        self.on_epoch_end()


def test_best_checkpoint_is_the_lowest_validation_loss_and_the_plateau_lowers_the_lr(tmp_path):
    t = _Trainer(tmp_path)
    for loss in (1.0, 0.8, 0.9, 0.85, 0.7, float("nan"), 0.75):
        t.epoch(loss)
    best = [(e, c[BEST_VAL_LOSS_KEY]) for e, name, c in t.saved if name == "checkpoint_best.pth"]
    assert best == [(0, 1.0), (1, 0.8), (4, 0.7)]
    assert t.best_val_loss == 0.7
    # patience 1: epochs 2 and 3 did not improve on 0.8 -> one reduction by 0.9; NaN does not step
    assert math.isclose(t.optimizer.param_groups[0]["lr"], 3e-4 * 0.9, rel_tol=1e-6)
    # on_train_epoch_start leaves the plateau scheduler alone (nnU-Net's would step it with the epoch number)
    assert t.logger.values["lrs"][:3] == [3e-4, 3e-4, 3e-4]


def test_checkpoint_round_trip_restores_the_scheduler_and_the_best_loss(tmp_path):
    t = _Trainer(tmp_path)
    for loss in (1.0, 1.1, 1.2, 1.3):
        t.epoch(loss)
    state = t.nnunet_checkpoint()
    assert state[SCHEDULER_KEY]["num_bad_epochs"] == t.lr_scheduler.num_bad_epochs
    other = _Trainer(tmp_path)
    other.restore_extra_state(state)
    assert other.lr_scheduler.state_dict() == t.lr_scheduler.state_dict() and other.best_val_loss == 1.0

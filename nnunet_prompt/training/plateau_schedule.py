"""The MedSAM study's schedule and model choice inside nnU-Net's loop: ``ReduceLROnPlateau`` on the validation loss,
and the checkpoint of the lowest validation loss as ``checkpoint_best.pth``.

nnU-Net 2.8.1 steps its scheduler with the epoch number at the start of each epoch (poly decay) and keeps the
checkpoint of the best EMA pseudo Dice. ``ValidationLossPlateau`` (mix in front of a trainer, like ``FixedEpochs``):

* ``configure_optimizers`` must return a ``ReduceLROnPlateau`` (``adamw_plateau``);
* ``on_train_epoch_start`` is nnU-Net's without the scheduler step (``ReduceLROnPlateau.step(epoch)`` would read the
  epoch number as the monitored value);
* ``on_epoch_end`` is nnU-Net's with two changes: the scheduler is stepped once with the epoch's validation loss
  (the mean over the epoch's validation iterations, gathered over DDP ranks by nnU-Net), and ``checkpoint_best.pth``
  is written when that loss is the lowest so far (instead of the EMA pseudo Dice test);
* checkpoints carry the scheduler's state and the best validation loss (keys ``lr_scheduler_state``,
  ``best_val_loss``), so ``--c`` continues the plateau counter as well as AdamW's moments.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import torch
from torch.optim import AdamW
from torch.optim.lr_scheduler import ReduceLROnPlateau

SCHEDULER_KEY = "lr_scheduler_state"
BEST_VAL_LOSS_KEY = "best_val_loss"


def adamw_plateau(trainer, factor: float = 0.9, patience: int = 5, **adamw_kwargs):
    """AdamW on the trainable parameters, lr reduced by ``factor`` after ``patience`` epochs without a lower
    validation loss (the MedSAM study: 0.9, 5)."""
    params = [p for p in trainer.network.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=trainer.initial_lr, weight_decay=trainer.weight_decay, **adamw_kwargs)
    return optimizer, ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience)


class ValidationLossPlateau:
    best_val_loss: Optional[float] = None

    def on_train_epoch_start(self):
        # nnUNetTrainer.on_train_epoch_start (2.8.1) without `self.lr_scheduler.step(self.current_epoch)`
        self.network.train()
        self.print_to_log_file('')
        self.print_to_log_file(f'Epoch {self.current_epoch}')
        self.print_to_log_file(f"Current learning rate: {np.round(self.optimizer.param_groups[0]['lr'], decimals=5)}")
        self.logger.log('lrs', self.optimizer.param_groups[0]['lr'], self.current_epoch)

    def step_scheduler(self, val_loss: float) -> None:
        if not isinstance(self.lr_scheduler, ReduceLROnPlateau):
            raise TypeError(f"{type(self).__name__}: ValidationLossPlateau needs configure_optimizers to return a "
                            f"ReduceLROnPlateau, got {type(self.lr_scheduler).__name__}")
        if math.isfinite(val_loss):
            self.lr_scheduler.step(val_loss)

    def is_best(self, val_loss: float) -> bool:
        return math.isfinite(val_loss) and (self.best_val_loss is None or val_loss < self.best_val_loss)

    def on_epoch_end(self):
        # nnUNetTrainer.on_epoch_end (2.8.1); changed: the scheduler step and the choice of checkpoint_best
        from time import time
        log = self.logger
        log.log('epoch_end_timestamps', time(), self.current_epoch)
        val_loss = float(log.get_value('val_losses', step=-1))
        self.print_to_log_file('train_loss', np.round(log.get_value('train_losses', step=-1), decimals=4))
        self.print_to_log_file('val_loss', np.round(val_loss, decimals=4))
        self.print_to_log_file('Pseudo dice', [np.round(i, decimals=4) for i in
                                               log.get_value('dice_per_class_or_region', step=-1)])
        self.print_to_log_file(f"Epoch time: {np.round(log.get_value('epoch_end_timestamps', step=-1) - log.get_value('epoch_start_timestamps', step=-1), decimals=2)} s")
        self.step_scheduler(val_loss)  # before any checkpoint of this epoch, so that it holds the stepped state

        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != (self.num_epochs - 1):
            self.save_checkpoint(os.path.join(self.output_folder, 'checkpoint_latest.pth'))
        if self.is_best(val_loss):
            self.best_val_loss = val_loss
            self.print_to_log_file(f"New lowest validation loss: {np.round(val_loss, decimals=4)}: checkpoint_best.pth")
            self.save_checkpoint(os.path.join(self.output_folder, 'checkpoint_best.pth'))
        if self.local_rank == 0:
            log.plot_progress_png(self.output_folder)
        self.current_epoch += 1

    # ------------------------------------------------------------- checkpoints
    def nnunet_checkpoint(self) -> dict:
        return dict(super().nnunet_checkpoint(), **{SCHEDULER_KEY: self.lr_scheduler.state_dict(),
                                                    BEST_VAL_LOSS_KEY: self.best_val_loss})

    def restore_extra_state(self, checkpoint: dict) -> None:
        super().restore_extra_state(checkpoint)
        state = checkpoint.get(SCHEDULER_KEY)
        if state is None:
            self.print_to_log_file("the checkpoint holds no learning-rate scheduler state: the plateau counter "
                                   "starts anew", also_print_to_console=True)
        else:
            self.lr_scheduler.load_state_dict(state)
        self.best_val_loss = checkpoint.get(BEST_VAL_LOSS_KEY)


def scheduler_state(path: str) -> dict:
    """(for reports and tests) the scheduler state and best validation loss stored in a checkpoint file."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return {SCHEDULER_KEY: ckpt.get(SCHEDULER_KEY), BEST_VAL_LOSS_KEY: ckpt.get(BEST_VAL_LOSS_KEY)}

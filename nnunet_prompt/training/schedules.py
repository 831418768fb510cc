"""Training schedules and optimizers shared by prompt trainers and their plain-nnU-Net baselines."""
import os

import torch
from torch.optim import AdamW

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler


def trainable_adamw_poly(trainer, **adamw_kwargs):
    """AdamW on the network's trainable parameters (frozen SAM / language-model weights are left out) with
    nnU-Net's poly learning-rate decay over ``trainer.num_epochs``: what ``configure_optimizers`` returns."""
    params = [p for p in trainer.network.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=trainer.initial_lr, weight_decay=trainer.weight_decay, **adamw_kwargs)
    return optimizer, PolyLRScheduler(optimizer, trainer.initial_lr, trainer.num_epochs)


class FixedEpochs:
    """Mix in front of a trainer to train ``fixed_num_epochs`` epochs (as nnU-Net's nnUNetTrainer_5epochs etc.):

        class PromptTrainer_5epochs(FixedEpochs, PromptTrainer):
            fixed_num_epochs = 5
    """
    fixed_num_epochs: int

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.fixed_num_epochs


class DemoSchedule:
    """Short schedule for the 2-core CPU demo: ``NNUNET_PROMPT_DEMO_EPOCHS`` epochs (default 10) of
    ``NNUNET_PROMPT_DEMO_ITERS`` iterations (default 60) and 4 validation iterations per epoch, optimised
    with AdamW (lr 1e-3, amsgrad, poly decay), the optimizer of nnU-Net's own ``nnUNetTrainerAdam``
    variants. Mix in front of a trainer class; the baseline and the prompt trainers share it.

    Why not nnU-Net's SGD (lr 1e-2, Nesterov momentum 0.99): it is tuned for 250,000 iterations. In 600
    iterations on the demo's small lesions it first collapses to all-background and takes off after a
    random 0 to 10+ epochs; over five demo runs the prompt model stayed at Dice 0 once, and the baseline
    once. With AdamW both left the all-background state in the first epoch in every run we measured
    (benchmarks/RESULTS.md)."""

    initial_lr_demo = 1e-3
    demo_amsgrad = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_PROMPT_DEMO_EPOCHS", 10))
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_PROMPT_DEMO_ITERS", 60))
        self.num_val_iterations_per_epoch = 4
        self.initial_lr = self.initial_lr_demo

    def configure_optimizers(self):
        return trainable_adamw_poly(self, amsgrad=self.demo_amsgrad)

"""Training schedules shared by prompt trainers and their plain-nnU-Net baselines."""
import os

import torch
from torch.optim import AdamW

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler


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

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_PROMPT_DEMO_EPOCHS", 10))
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_PROMPT_DEMO_ITERS", 60))
        self.num_val_iterations_per_epoch = 4
        self.initial_lr = self.initial_lr_demo

    def configure_optimizers(self):
        optimizer = AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay, amsgrad=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)


def epochs(trainer_class, num_epochs: int, name: str):
    """A variant of ``trainer_class`` that trains ``num_epochs`` epochs, named in nnU-Net's style."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        trainer_class.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = num_epochs

    return type(name, (trainer_class,), {"__init__": __init__, "__module__": trainer_class.__module__,
                                         "__doc__": f"{trainer_class.__name__} for {num_epochs} epochs."})

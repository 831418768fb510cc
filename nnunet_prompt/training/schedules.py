"""Training schedules shared by prompt trainers and their plain-nnU-Net baselines."""
import os

import torch


class DemoSchedule:
    """Short schedule for the 2-core CPU demo: ``NNUNET_PROMPT_DEMO_EPOCHS`` epochs (default 10) of
    ``NNUNET_PROMPT_DEMO_ITERS`` iterations (default 60) and 4 validation iterations per epoch.
    Mix in front of a trainer class; the baseline and the prompt trainer share it."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_PROMPT_DEMO_EPOCHS", 10))
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_PROMPT_DEMO_ITERS", 60))
        self.num_val_iterations_per_epoch = 4


def epochs(trainer_class, num_epochs: int, name: str):
    """A variant of ``trainer_class`` that trains ``num_epochs`` epochs, named in nnU-Net's style."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        trainer_class.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = num_epochs

    return type(name, (trainer_class,), {"__init__": __init__, "__module__": trainer_class.__module__,
                                         "__doc__": f"{trainer_class.__name__} for {num_epochs} epochs."})

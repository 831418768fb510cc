"""DDP (-num_gpus) wraps the network without find_unused_parameters: in every step every trainable parameter needs
a gradient. One rank's steps of the prompt-channel and PSAP trainers through their own train_step (nnU-Net's data
loader, loss and optimizer), in every prompt mode their simulated user produces, with one case per batch and
nnU-Net's DDP loss weights (ddp_harness.as_one_rank_of_two). The text, SAM and distillation families have the same
check in their own test files (test_text_trainer, test_sam_lora, test_sam_adapter3d, test_distill)."""
import os

import pytest
import torch

from conftest import CONFIG, PLANS
from ddp_harness import as_one_rank_of_two, parameters_without_gradient, prompt_modes, prompted_step


def _trainer(planned_dataset, module_name, name):
    import importlib
    from nnunetv2.utilities.file_path_utilities import load_json
    module = importlib.import_module(f"nnunet_prompt_trainers.{module_name}")
    pre = os.path.join(planned_dataset["env"]["nnUNet_preprocessed"], planned_dataset["name"])
    return getattr(module, name)(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=False), CONFIG, 0,
                                 load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))


@pytest.mark.parametrize("module_name,name", [("PromptTrainer", "PromptTrainer"), ("PSAPTrainer", "PSAPTrainer"),
                                              ("PSAPTrainer", "PSAPTrainer_CPP")])
def test_every_trainable_parameter_gets_a_gradient_in_every_prompt_mode(planned_dataset, monkeypatch, module_name,
                                                                        name):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = _trainer(planned_dataset, module_name, name)
    trainer.initialize()
    as_one_rank_of_two(trainer)
    dl_train, _ = trainer.get_dataloaders()
    trainer.network.train()
    modes = prompt_modes(trainer)
    assert len(modes) >= 3
    for kind, rounds, empty in modes:
        batch = next(dl_train)
        assert batch["data"].shape[0] == 1
        prompted_step(trainer, batch, kind, rounds, empty)
        missing = parameters_without_gradient(trainer.network)
        assert not missing, f"{name}, prompt {kind}, {rounds} round(s), empty target {empty}: no gradient for {missing}"

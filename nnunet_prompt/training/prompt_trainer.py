"""The prompt-channel trainer base: nnU-Net's planned U-Net with extra prompt input channels.

Everything nnU-Net does stays nnU-Net's: planning, data loading, augmentation, the training loop,
the loss, checkpoints. This class changes four things:

* the network gets ``PromptEncoding.num_channels`` extra input channels and two outputs (background,
  prompted object): a prompt addresses one target label at a time (``Prompt.label``);
* ``train_step`` picks a target label per sample, simulates prompts from it on the training device
  (interaction rounds, see ``SimulationPolicy``) and appends them to the image channels;
* ``validation_step`` does the same with one round, so nnU-Net's pseudo Dice measures prompted Dice;
* the final validation predicts every validation case with simulated prompts for each of its labels
  and writes nnU-Net's usual ``validation/summary.json``.

Iterative training (CT-SAM3D, and Sofiuk et al. 2022 cited there): a batch runs r rounds, r drawn
uniformly from 1..num_rounds. Rounds 1..r-1 are forward passes without gradient whose predictions
drive the simulated user's next click and come back as the mask prompt; round r is the ordinary
nnU-Net training step. Round 1 never has a mask. Drawing r keeps first-round prompts (box only,
clicks only) in training, so one model accepts either.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional

import torch
from torch import autocast

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.helpers import dummy_context

from nnunet_prompt.interaction.simulation import InteractionSimulator, SimulationPolicy
from nnunet_prompt.model_record import ModelRecordError, record_from_plans
from nnunet_prompt.networks.contract import NUM_OUTPUTS, append_empty_prompts_hook
from nnunet_prompt.prompts.encoding import PromptEncoding
from nnunet_prompt.prompts.geometry import median_volume_spacing
from nnunet_prompt.prompts.regions_or_labels import TargetKey, one_target_vs_rest, prompt_targets, training_label_manager
from nnunet_prompt.training.recorded_trainer import RecordedTrainerMixin, rank_seed


def fold_offset(fold) -> int:
    return fold if isinstance(fold, int) else 0  # fold 'all'

class PromptTrainerBase(RecordedTrainerMixin, nnUNetTrainer):
    # the prompt channel layout of a fresh training (recorded in the plans; a model is rebuilt with its recorded one)
    prompt_encoding: PromptEncoding = PromptEncoding()
    simulation_policy: SimulationPolicy = SimulationPolicy()
    # initial prompt the final validation simulates for each label of each validation case
    validation_prompt_type: str = "box+clicks"
    simulation_seed: int = 1234

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # name -> label value, or region (tuple of label values) in a region dataset; training sees label maps
        self.target_labels: Dict[str, TargetKey] = prompt_targets(dataset_json)
        self.label_manager = training_label_manager(self.label_manager)
        self._simulator = None
        self.reset_timing()

    def reset_timing(self):
        """Seconds spent since the last reset: simulated user, refinement forward passes, forward-backward."""
        self._timing = {"simulation_s": 0.0, "refinement_forward_s": 0.0, "train_step_s": 0.0, "steps": 0}

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        # num_output_channels (the dataset's classes) is replaced by NUM_OUTPUTS: one prompt, one object
        record = record_from_plans(plans_manager.plans)
        num_prompt_channels = PromptEncoding.from_dict(record.prompt_encoding).num_channels
        network = cls.build_prompt_network(plans_manager, configuration_manager, num_input_channels,
                                           num_prompt_channels, record.network, enable_deep_supervision)
        network.register_forward_pre_hook(append_empty_prompts_hook(num_input_channels, num_prompt_channels))
        return network

    @classmethod
    def build_prompt_network(cls, plans_manager, configuration_manager, num_image_channels: int,
                             num_prompt_channels: int, options: dict,
                             enable_deep_supervision: bool = True) -> torch.nn.Module:
        """The network proper: input = image channels followed by the prompt channels, NUM_OUTPUTS outputs.
        Here nnU-Net's planned U-Net with the prompts as extra input channels; trainers that feed prompts
        elsewhere (PSAPTrainer, SAM) override this and keep the input layout, so inference works unchanged.
        ``options``: the recorded ``network_options()``."""
        return get_network_from_plans(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_image_channels + num_prompt_channels, NUM_OUTPUTS, allow_init=True,
            deep_supervision=enable_deep_supervision)

    def record_fields(self) -> dict:
        return dict(super().record_fields(), prompt_encoding=self.prompt_encoding.to_dict())

    def check_resumed_record(self, record) -> None:
        super().check_resumed_record(record)
        stored = PromptEncoding.from_dict(record.prompt_encoding)
        if stored != self.prompt_encoding:
            raise ModelRecordError(f"{type(self).__name__} cannot resume a model trained with prompt encoding "
                                   f"{stored.to_dict()}: this code encodes {self.prompt_encoding.to_dict()}.")

    # ---------------------------------------------------------------- prompts
    @property
    def simulator(self) -> InteractionSimulator:
        if self._simulator is None:
            # a stream per DDP rank (rank_seed); its state travels in the checkpoints (random_generators)
            self._simulator = InteractionSimulator(self.prompt_encoding, self.simulation_spacing(),
                                                   self.simulation_policy,
                                                   seed=rank_seed(self.simulation_seed + fold_offset(self.fold)),
                                                   device=self.device)
        return self._simulator

    def random_generators(self) -> Dict[str, torch.Generator]:
        return dict(super().random_generators(), simulator=self.simulator.generator)

    def simulation_spacing(self):
        """Spacing of the volumes the simulated user sees (patches; 3D also for 2d configurations)."""
        return median_volume_spacing(self.plans_manager, self.configuration_manager)

    def select_targets(self, target: List[torch.Tensor]) -> List[torch.Tensor]:
        """Pick one label (region) per sample (uniformly among those present in the patch) and turn every
        deep-supervision target into 'that label (region) vs rest', keeping nnU-Net's ignore label."""
        return one_target_vs_rest(target, list(self.target_labels.values()), self.label_manager.ignore_label,
                                  self.simulator.generator)

    def _forward_prediction(self, x: torch.Tensor) -> torch.Tensor:
        # under DDP, ranks may run different numbers of these passes: DDP broadcasts buffers only at the first
        # forward after a gradient-enabled one, so these no-grad passes issue no unmatched collective
        # (tests/test_sam_lora.py trains a SAM network, which has buffers, this way under two-process DDP)
        with autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context():
            out = self.network(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.argmax(1).bool()

    def _sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def simulate_prompts(self, data: torch.Tensor, target: torch.Tensor, rounds: int,
                         initial: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Prompt channels after ``rounds`` simulated interactions (rounds - 1 refinements). ``initial``: the
        round-1 prompt channels instead of a simulated initial prompt (e.g. none, when text alone starts)."""
        self._sync()
        t0 = time.perf_counter()
        obj = target[:, 0] == 1
        prompts = self.simulator.initial_prompts(obj) if initial is None else initial
        forward_s = 0.0
        for _ in range(rounds - 1):
            self._sync()
            f0 = time.perf_counter()
            with torch.no_grad():
                pred = self._forward_prediction(torch.cat([data, prompts], 1))
            self._sync()
            forward_s += time.perf_counter() - f0
            prompts = self.simulator.refine(prompts, pred, obj)
        self._sync()
        self._timing["simulation_s"] += time.perf_counter() - t0 - forward_s
        self._timing["refinement_forward_s"] += forward_s
        return prompts

    def _prompted_batch(self, batch: dict, rounds: int) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        as_list = isinstance(target, list)
        target = [i.to(self.device, non_blocking=True) for i in (target if as_list else [target])]
        target = self.select_targets(target)
        prompts = self.simulate_prompts(data, target[0], rounds)
        return dict(batch, data=torch.cat([data, prompts.to(data.dtype)], 1),
                    target=target if as_list else target[0])

    # -------------------------------------------------------------- nnU-Net hooks
    def draw_rounds(self) -> int:
        """Interaction rounds of the next training batch, uniformly 1..num_rounds."""
        return 1 + int(torch.randint(self.simulation_policy.num_rounds, (1,), generator=self.simulator.generator,
                                     device=self.simulator.generator.device).item())

    def train_step(self, batch: dict) -> dict:
        batch = self._prompted_batch(batch, self.draw_rounds())
        self._sync()
        t0 = time.perf_counter()
        out = super().train_step(batch)
        self._sync()
        self._timing["train_step_s"] += time.perf_counter() - t0
        self._timing["steps"] += 1
        return out

    def validation_step(self, batch: dict) -> dict:
        return super().validation_step(self._prompted_batch(batch, rounds=1))

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        n = max(self._timing["steps"], 1)
        self.print_to_log_file(
            f"prompt simulation {1000 * self._timing['simulation_s'] / n:.1f} ms/step, refinement forward passes "
            f"{1000 * self._timing['refinement_forward_s'] / n:.1f} ms/step, forward-backward "
            f"{1000 * self._timing['train_step_s'] / n:.1f} ms/step")
        self.reset_timing()

    def perform_actual_validation(self, save_probabilities: bool = False):
        from nnunet_prompt.training.prompted_validation import run_prompted_validation
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        try:
            run_prompted_validation(self, save_probabilities)
        finally:
            self.set_deep_supervision_enabled(True)

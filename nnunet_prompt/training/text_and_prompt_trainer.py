"""One model for clinical text and spatial prompts: the text trainer (LLMSeg) composed with the prompt-channel
trainer (PromptTrainer's channels and interaction simulation).

The network is ``TextAndPromptUNet``: ``TextConditionedUNet`` around nnU-Net's planned U-Net whose input is the
image channels followed by the prompt channels, two outputs (background, the prompted object), and a learned token
per target label beside the text (text alone cannot say which of several labels is wanted). Everything else is one
of the two bases':

* from ``PromptTrainerBase``: a target label per sample, simulated prompts appended as channels, iterative click
  training, the prompt encoding in the record;
* from ``TextPromptTrainerBase``: the clinical text per case from the raw dataset's sidecar, the context encoder in
  the record, the position channels after the image channels (the prompt channels follow them), no mirroring
  (laterality is in the text).

Each training batch draws what it is given (``mode_probabilities``):

* ``"text"``: the case's text, empty prompt channels (``nnunet-prompt predict`` with text only);
* ``"prompts"``: empty text, simulated prompts (clicks or a box, no text at hand);
* ``"both"``: the text and simulated prompts. Of these, ``text_first_probability`` start from no prompt at all:
  round 1 is the text's own prediction and the refinement rounds add clicks on its errors with that prediction as
  the mask prompt, which is what the session's ``set_text(...)`` then ``add_point(...)`` gives the model.

So one model serves text alone, clicks alone and both. Region datasets are refused (the target token is per label
value; a region dataset's regions are not).
"""
from __future__ import annotations

from typing import List

import torch

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_prompt.model_record import record_from_plans
from nnunet_prompt.networks.contract import NUM_OUTPUTS, append_empty_prompts_hook, unwrap
from nnunet_prompt.prompts.encoding import PromptEncoding
from nnunet_prompt.prompts.regions_or_labels import pick_targets, targets_vs_rest
from nnunet_prompt.text.config import ClinicalContextConfig
from nnunet_prompt.text.text_and_prompt_unet import TextAndPromptUNet
from nnunet_prompt.training.prompt_trainer import PromptTrainerBase
from nnunet_prompt.training.text_trainer import EMPTY_ENTRY, TextPromptTrainerBase

TEXT, PROMPTS, BOTH = "text", "prompts", "both"
MODES = (TEXT, PROMPTS, BOTH)


class TextAndPromptTrainerBase(TextPromptTrainerBase, PromptTrainerBase):
    mode_probabilities = {TEXT: 1 / 3, PROMPTS: 1 / 3, BOTH: 1 / 3}
    text_first_probability: float = 0.5  # of "both" batches
    validation_mode: str = BOTH  # what nnU-Net's pseudo Dice per epoch is measured with

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.plans_manager.get_label_manager(dataset_json).has_regions:
            raise ValueError(f"{type(self).__name__} predicts one label at a time, named by a learned token per label "
                             f"value; dataset '{self.plans_manager.dataset_name}' is region-based (its dataset.json "
                             f"'labels' hold lists). Train it on a label dataset, or use PromptTrainer (spatial prompts "
                             f"only) or TextPromptTrainer (text only).")
        if set(self.mode_probabilities) - set(MODES) or abs(sum(self.mode_probabilities.values()) - 1) > 1e-6:
            raise ValueError(f"mode_probabilities must give probabilities summing to 1 over {MODES}, got "
                             f"{self.mode_probabilities}")
        self._mode = BOTH
        self._text_first = False
        self._mode_counts = {m: 0 for m in (*MODES, "text first")}

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        # num_output_channels (the dataset's classes, background included) sizes the target tokens; the network
        # itself has NUM_OUTPUTS outputs (one prompted object)
        record = record_from_plans(plans_manager.plans)
        config = ClinicalContextConfig.from_dict(record.clinical_context).relocated()
        num_prompt_channels = PromptEncoding.from_dict(record.prompt_encoding).num_channels
        # input: image, position channels (the text trainer's dataset appends them), prompt channels
        num_before_prompts = num_input_channels + config.position_channels
        unet = get_network_from_plans(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_before_prompts + num_prompt_channels + config.position_maps, NUM_OUTPUTS, allow_init=True,
            deep_supervision=enable_deep_supervision)
        # the network appends its position maps after the prompt channels
        network = TextAndPromptUNet(unet, config.build_encoder(), config.entry_key, num_output_channels,
                                    num_input_channels, config.position_channels, config.position_maps,
                                    config.laterality_contrast)
        network.register_forward_pre_hook(append_empty_prompts_hook(num_before_prompts, num_prompt_channels))
        return network

    # ---------------------------------------------------------- what a batch gets
    def _uniform(self) -> float:
        g = self.simulator.generator
        return float(torch.rand(1, generator=g, device=g.device).item())

    def draw_mode(self) -> str:
        """Text alone, prompts alone or both, for the next training batch (drawn from the simulator's stream, so
        checkpoints continue it)."""
        u, total = self._uniform(), 0.0
        mode = MODES[-1]
        for m in MODES:
            total += self.mode_probabilities.get(m, 0.0)
            if u < total:
                mode = m
                break
        self._text_first = mode == BOTH and self._uniform() < self.text_first_probability
        return mode

    def conditioned_on_batch(self, batch: dict):
        # the target labels are named once select_targets has drawn them
        entries = [EMPTY_ENTRY if self._mode == PROMPTS else self.entry(k) for k in batch['keys']]
        return unwrap(self.network).conditioned_on(entries)

    def select_targets(self, target: List[torch.Tensor]) -> List[torch.Tensor]:
        chosen = pick_targets(target[0], list(self.target_labels.values()), self.simulator.generator)
        unwrap(self.network).set_targets(chosen)
        return targets_vs_rest(target, chosen, self.label_manager.ignore_label)

    def simulate_prompts(self, data: torch.Tensor, target: torch.Tensor, rounds: int, initial=None) -> torch.Tensor:
        empty = torch.zeros((data.shape[0], self.prompt_encoding.num_channels, *data.shape[2:]), device=data.device)
        if self._mode == TEXT:
            return empty
        if self._mode == BOTH and self._text_first:  # the text's prediction, then clicks on its errors
            return super().simulate_prompts(data, target, max(rounds, 2), initial=empty)
        return super().simulate_prompts(data, target, rounds, initial)

    # -------------------------------------------------------------- nnU-Net hooks
    def train_step(self, batch: dict) -> dict:
        self._mode = self.draw_mode()
        self._mode_counts[self._mode] += 1
        self._mode_counts["text first"] += self._text_first
        with self.conditioned_on_batch(batch):
            return PromptTrainerBase.train_step(self, batch)

    def validation_step(self, batch: dict) -> dict:
        self._mode, self._text_first = self.validation_mode, False
        with self.conditioned_on_batch(batch):
            return PromptTrainerBase.validation_step(self, batch)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        self.print_to_log_file("batches given " + ", ".join(f"{m}: {n}" for m, n in self._mode_counts.items()))
        self._mode_counts = dict.fromkeys(self._mode_counts, 0)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Every validation case with its text and a simulated prompt per label (``validation_prompt_type``)."""
        from nnunet_prompt.training.prompted_validation import run_prompted_validation
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        try:
            run_prompted_validation(self, save_probabilities, case_entry=self.entry)
        finally:
            self.set_deep_supervision_enabled(True)

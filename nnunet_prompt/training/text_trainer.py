"""The text prompt trainer base (LLMSeg): nnU-Net's planned U-Net conditioned on clinical text.

nnU-Net keeps planning, data loading, the loss, the training loop and checkpoints. This class changes:

* the network: ``TextConditionedUNet`` around the planned U-Net, with the context encoder that
  ``clinical_context`` describes (a frozen language model with text prompt tuning by default);
* ``train_step``/``validation_step`` condition the network on each sample's clinical entry, looked up by the
  batch's case keys in the raw dataset's clinical-text sidecar (``nnunet_prompt.clinical_text``);
* the context encoder is described in the plans record (``clinical_context``), from which
  ``build_network_architecture`` rebuilds it: fresh trainings take ``clinical_context`` and the language model
  named by ``NNUNET_PROMPT_TEXT_MODEL`` (default MiniLM-L6), ``--c`` and prediction the recorded one;
* augmentation keeps left and right (``SideKeepingAugmentation``: laterality is in the text);
* each case carries three position channels after its image channels (``nnunet_prompt.text.image_position``):
  where a patch lies in the whole image, which nnU-Net's planned patches (a fraction of a CT) do not say; the
  network also computes text-steered maps from them whose slopes read the note against its side-swapped copy
  (``position_maps``, ``laterality_contrast``: ``nnunet_prompt.text.position_map``);
* the final validation predicts each validation case with its own text.

The output is the dataset's usual label map (the text selects *what* to contour, e.g. the nodal CTV
when the text says N1), so plain nnU-Net evaluation applies.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_prompt.clinical_text import SIDECAR_FILENAME, read_sidecar
from nnunet_prompt.model_record import PLANS_KEY, ModelRecordError, record_from_plans
from nnunet_prompt.networks.contract import unwrap
from nnunet_prompt.text.config import ClinicalContextConfig
from nnunet_prompt.text.image_position import PositionedDataset, protect_position_channels
from nnunet_prompt.text.text_unet import TextConditionedUNet
from nnunet_prompt.training.recorded_trainer import RecordedTrainerMixin
from nnunet_prompt.training.side_keeping_augmentation import SideKeepingAugmentation

EMPTY_ENTRY = {"text": "", "fields": {}}


class ClinicalTextError(ValueError):
    """A case's clinical text is missing or unusable. The message names the case, the file and the fix."""


class TextPromptTrainerBase(RecordedTrainerMixin, SideKeepingAugmentation, nnUNetTrainer):
    clinical_context: ClinicalContextConfig = ClinicalContextConfig()
    # opt-in: cases without an entry in the sidecar get empty text / no fields instead of an error
    allow_missing_text: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._entries: Optional[Dict[str, dict]] = None
        self._sidecar_path: Optional[str] = None

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        config = ClinicalContextConfig.from_dict(record_from_plans(plans_manager.plans).clinical_context).relocated()
        unet = get_network_from_plans(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_input_channels + config.network_input_channels,
            num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)
        return TextConditionedUNet(unet, config.build_encoder(), config.entry_key, num_input_channels,
                                   config.position_channels, config.position_maps, config.laterality_contrast)

    def record_fields(self) -> dict:
        context = self.clinical_context.with_text_model_from_environment()
        return dict(super().record_fields(), clinical_context=context.to_dict())

    def check_resumed_record(self, record) -> None:
        super().check_resumed_record(record)
        stored = ClinicalContextConfig.from_dict(record.clinical_context)
        mine = self.clinical_context
        fields = ("kind", "num_groups", "vectors_per_group", "position", "text_readout", "position_maps",
                  "laterality_contrast")
        if any(getattr(stored, f) != getattr(mine, f) for f in fields):
            raise ModelRecordError(f"{type(self).__name__} cannot resume a model trained with clinical context {stored}.")

    @property
    def context_config(self) -> ClinicalContextConfig:
        """The recorded context encoder (the class's before the record is written, e.g. for early text checks)."""
        stored = self.plans_manager.plans.get(PLANS_KEY)
        return self.clinical_context if stored is None else ClinicalContextConfig.from_dict(stored["clinical_context"])

    # ------------------------------------------------------- position channels
    def get_tr_and_val_datasets(self):
        datasets = super().get_tr_and_val_datasets()
        if not self.context_config.position_channels:
            return datasets
        return tuple(PositionedDataset(d) for d in datasets)

    def get_training_transforms(self, *args, **kwargs):
        pipeline = super().get_training_transforms(*args, **kwargs)
        return protect_position_channels(pipeline) if self.context_config.position_channels else pipeline

    # ---------------------------------------------------------- clinical text
    def clinical_entries(self) -> Dict[str, dict]:
        if self._entries is None:
            from nnunetv2.paths import nnUNet_raw
            if nnUNet_raw is None:
                raise ClinicalTextError("nnUNet_raw is not set: text trainers read the clinical-text sidecar "
                                        f"{SIDECAR_FILENAME} from the raw dataset folder. Export nnUNet_raw.")
            folder = os.path.join(nnUNet_raw, self.plans_manager.dataset_name)
            self._sidecar_path = os.path.join(folder, SIDECAR_FILENAME)
            try:
                self._entries = read_sidecar(folder)
            except FileNotFoundError:
                if not self.allow_missing_text:
                    raise
                self._entries = {}
        return self._entries

    def entry(self, case: str) -> dict:
        entries = self.clinical_entries()
        key = self.context_config.entry_key
        e = entries.get(case)
        if e is None or key not in e:
            if self.allow_missing_text:
                return EMPTY_ENTRY
            what = "no entry" if e is None else f"no '{key}'"
            raise ClinicalTextError(
                f"Case '{case}' has {what} in the clinical-text sidecar '{self._sidecar_path}'. Add it (see "
                f"nnunet_prompt/clinical_text.py; converters write it with --clinical), or train a "
                f"*_allowMissingText variant to use empty text for such cases.")
        return e

    def on_train_start(self):
        # every training case must have its text before the first step, not after an hour of training
        tr_keys, val_keys = self.do_split()
        for k in list(tr_keys) + list(val_keys):
            self.entry(k)
        super().on_train_start()
        encoder = unwrap(self.network).context_encoder
        standardize = getattr(encoder, "standardize", None)
        if standardize is not None and int(standardize.num_updates) == 0:  # not when resuming with --c
            encoder.calibrate(sorted({self.entry(k)["text"] for k in tr_keys}))

    def conditioned_on_batch(self, batch: dict):
        return unwrap(self.network).conditioned_on([self.entry(k) for k in batch['keys']])

    # -------------------------------------------------------------- nnU-Net hooks
    def train_step(self, batch: dict) -> dict:
        with self.conditioned_on_batch(batch):
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        with self.conditioned_on_batch(batch):
            return super().validation_step(batch)

    def perform_actual_validation(self, save_probabilities: bool = False):
        from nnunet_prompt.inference.predictor import PromptPredictor
        from nnunet_prompt.training.prompted_validation import validate_cases
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        predictor = PromptPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=True, device=self.device, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__, None)
        predictor.position_channels = self.context_config.position_channels
        key = self.context_config.entry_key

        def predict_case(k, data, seg):
            e = self.entry(k)
            with unwrap(self.network).conditioned_on([e]):
                return predictor.predict_sliding_window_return_logits(data), {key: e.get(key)}

        try:
            validate_cases(self, predict_case, "clinical_text", save_probabilities)
        finally:
            self.set_deep_supervision_enabled(True)

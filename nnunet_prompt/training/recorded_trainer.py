"""The trainer side of the model record (``nnunet_prompt.model_record``): write it before nnU-Net builds the
network, read it back when ``--c`` resumes.

A fresh training describes its model from the trainer class (and, where a file is involved, the environment:
``NNUNET_PROMPT_SAM_CHECKPOINT``, ``NNUNET_PROMPT_TEXT_MODEL``, ``NNUNET_PROMPT_DISTILL_TEACHER``). A resumed
training (``--c``, ``--val``) takes the record its checkpoint was trained with: nnU-Net saves the plans dict,
record included, in every checkpoint's ``init_args``, and passes the *preprocessed* plans (without a record) to
the trainer it resumes, so the record is adopted in ``load_checkpoint`` before the network is built.
"""
from __future__ import annotations

import os
from typing import Union

import torch

from nnunet_prompt.model_record import (PLANS_KEY, ModelRecord, ModelRecordError, outdated_model_message,
                                        legacy_description, put_record, record_from_plans)


class RecordedTrainerMixin:
    """Mix in front of nnUNetTrainer. Subclasses contribute ``record_fields()`` (cooperatively, via super()) and
    ``network_options()``; ``build_network_architecture`` reads ``record_from_plans(plans_manager.plans)``."""

    @classmethod
    def network_options(cls) -> dict:
        """The trainer family's network options as stored in the record (the network is rebuilt from these)."""
        return {}

    def record_fields(self) -> dict:
        """Record fields for a fresh training (ModelRecord's fields other than trainer and network)."""
        return {}

    def fresh_record(self) -> ModelRecord:
        return ModelRecord(trainer=type(self).__name__, network=self.network_options(), **self.record_fields())

    @property
    def record(self) -> ModelRecord:
        return record_from_plans(self.plans_manager.plans)

    def initialize(self):
        if not self.was_initialized and PLANS_KEY not in self.plans_manager.plans:
            put_record(self.plans_manager.plans, self.fresh_record())
        super().initialize()

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        if not self.was_initialized:
            checkpoint = filename_or_checkpoint
            if isinstance(checkpoint, str):
                checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
            self.adopt_record(checkpoint, filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else None)
        # nnU-Net 2.8.1's load_checkpoint reads the file again: it handles a path, not the dict (no `else` branch)
        super().load_checkpoint(filename_or_checkpoint)

    def adopt_record(self, checkpoint: dict, path: str = None) -> None:
        """Resume with the record the checkpoint was trained with (else the model folder's plans.json record)."""
        stored = checkpoint.get("init_args", {}).get("plans", {}).get(PLANS_KEY)
        if stored is None:
            plans_file = os.path.join(self.output_folder_base, "plans.json")
            if os.path.isfile(plans_file):
                import json
                with open(plans_file, "r", encoding="utf-8") as f:
                    stored = json.load(f).get(PLANS_KEY)
        if stored is None:
            what = legacy_description(self.output_folder_base)
            if what:
                raise ModelRecordError(outdated_model_message(self.output_folder_base, what))
            raise ModelRecordError(f"Checkpoint {path or ''} has no '{PLANS_KEY}' record in its plans: it was not "
                                   f"trained by {type(self).__name__} of nnunet-prompt.")
        record = ModelRecord.from_dict(stored)
        if record.network != self.network_options():
            raise ModelRecordError(
                f"{type(self).__name__} cannot resume {path or 'this checkpoint'}: it was trained with network options "
                f"{record.network}, the trainer class now builds {self.network_options()}. Resume with the "
                f"nnunet-prompt version that trained it, or train anew.")
        self.check_resumed_record(record)
        put_record(self.plans_manager.plans, record)

    def check_resumed_record(self, record: ModelRecord) -> None:
        """Refuse a resumed record that this trainer class would not train on (overridden per family)."""

"""How a trained model is rebuilt: one record inside its plans, ``plans["nnunet_prompt"]``.

nnU-Net rebuilds every network from the ``plans.json`` it copies beside a trained model, through the trainer's
``build_network_architecture(plans_manager, ...)``. Our networks need a little more than nnU-Net's plans (the prompt
channel layout, the language model, the SAM base file, network options), so the trainer writes that into the plans
dict before nnU-Net builds the network. nnU-Net then saves it with everything else: in ``plans.json`` beside the
model, and in every checkpoint's ``init_args`` (which ``--c`` reads back). Prediction (``nnUNetv2_predict``,
``nnunet-prompt predict``, the session) and resuming therefore rebuild the network from the plans alone.

Fields (``ModelRecord``; docs/reference/plans_record.md describes each):

* ``trainer``: the trainer class that wrote the record;
* ``prompt_encoding``: the spatial prompt channel layout (``PromptEncoding``), or None for models without
  spatial prompts;
* ``clinical_context``: the clinical text / category encoder (``ClinicalContextConfig``), or None;
* ``sam``: the SAM base reference and encoder shape, or None;
* ``network``: the trainer family's network options (PSAP widths, SAM LoRA options, AutoSAM options, ...);
* ``distillation``: DistillTrainer's teacher and λ, or None.

Model folders from before this record (sidecar files ``prompt_encoding.json``, ``clinical_context.json``,
``sam_model.json``, ``distill_teacher.json``, plans keys ``nnunet_prompt_sam_lora`` / ``nnunet_prompt_sam_adapter3d``)
are refused with one message; ``nnunet-prompt upgrade-model FOLDER`` converts them (``upgrade_model_folder``).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import List, Optional

PLANS_KEY = "nnunet_prompt"
RECORD_VERSION = 2
LEGACY_FILES = ("prompt_encoding.json", "clinical_context.json", "sam_model.json", "distill_teacher.json")
LEGACY_PLANS_KEYS = ("nnunet_prompt_sam_lora", "nnunet_prompt_sam_adapter3d")
UPGRADE_BACKUP = "plans.before_upgrade.json"


class ModelRecordError(ValueError):
    """A model's plans have no usable record. The message names the folder (when known) and the fix."""


@dataclass(frozen=True)
class ModelRecord:
    trainer: str
    prompt_encoding: Optional[dict] = None
    clinical_context: Optional[dict] = None
    sam: Optional[dict] = None
    network: dict = field(default_factory=dict)
    distillation: Optional[dict] = None
    version: int = RECORD_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelRecord":
        if int(d.get("version", 0)) != RECORD_VERSION:
            raise ModelRecordError(f"The plans' '{PLANS_KEY}' record has version {d.get('version')}, this nnunet-prompt "
                                   f"reads version {RECORD_VERSION}. Retrain the model, or use the nnunet-prompt that "
                                   f"trained it.")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes) -> "ModelRecord":
        return ModelRecord(**dict(self.to_dict(), **changes))


def legacy_description(folder: str, plans: Optional[dict] = None) -> List[str]:
    """What describes a model folder trained before the record existed (sidecar files, old plans keys)."""
    found = [f for f in LEGACY_FILES if os.path.isfile(os.path.join(folder, f))]
    if plans is None and os.path.isfile(os.path.join(folder, "plans.json")):
        plans = _read_json(os.path.join(folder, "plans.json"))
    return found + [f"plans key '{k}'" for k in LEGACY_PLANS_KEYS if plans and k in plans]


def outdated_model_message(folder: str, what: List[str]) -> str:
    return (f"Model folder '{folder}' was trained by an nnunet-prompt from before the plans record (it is described by "
            f"{', '.join(what)}). Run `nnunet-prompt upgrade-model {folder}` once: it moves that description into "
            f"plans.json (key '{PLANS_KEY}', a backup is kept as {UPGRADE_BACKUP}); or retrain.")


def record_from_plans(plans: dict, folder: Optional[str] = None) -> ModelRecord:
    """The record a network is rebuilt from; a clear error when the plans have none."""
    d = plans.get(PLANS_KEY)
    if d is None:
        if folder is not None and legacy_description(folder, plans):
            raise ModelRecordError(outdated_model_message(folder, legacy_description(folder, plans)))
        legacy = [k for k in LEGACY_PLANS_KEYS if k in plans]
        where = f"'{os.path.join(folder, 'plans.json')}'" if folder else "These plans"
        hint = (f" They hold the old key(s) {legacy}: run `nnunet-prompt upgrade-model MODEL_FOLDER` on the model "
                f"folder." if legacy else
                " If it is a plain nnU-Net model (nnUNetTrainer and its variants), predict it with nnUNetv2_predict. "
                "A model folder trained before nnunet-prompt kept this record (beside plans.json: "
                f"{', '.join(LEGACY_FILES)}) is converted by `nnunet-prompt upgrade-model MODEL_FOLDER`.")
        raise ModelRecordError(f"{where} hold no '{PLANS_KEY}' record, which nnunet-prompt's trainers write when "
                               f"training starts: this network cannot be rebuilt from them.{hint}")
    return ModelRecord.from_dict(d)


def put_record(plans: dict, record: ModelRecord) -> None:
    """Write the record into the plans dict that nnU-Net saves as plans.json and in checkpoints."""
    plans[PLANS_KEY] = record.to_dict()


def _read_json(path: str) -> dict:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------- upgrading old model folders
def _trainer_name_of(folder: str) -> str:
    """nnU-Net names model folders TRAINER__PLANS__CONFIGURATION; a checkpoint says it too."""
    for fold in sorted(d for d in os.listdir(folder) if d.startswith("fold_")):
        for c in ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth"):
            path = os.path.join(folder, fold, c)
            if os.path.isfile(path):
                import torch
                return str(torch.load(path, map_location="cpu", weights_only=False)["trainer_name"])
    return os.path.basename(os.path.normpath(folder)).split("__")[0]


def legacy_record(folder: str, plans: dict, trainer_class) -> ModelRecord:
    """The record an old model folder would have had: its sidecar files and old plans keys, and the network
    options of its trainer class (which did not change when the record was introduced)."""
    def sidecar(name):
        path = os.path.join(folder, name)
        return _read_json(path) if os.path.isfile(path) else None

    network = dict(trainer_class.network_options()) if hasattr(trainer_class, "network_options") else {}
    sam = sidecar("sam_model.json") or plans.get("nnunet_prompt_sam_lora")
    adapter3d = plans.get("nnunet_prompt_sam_adapter3d")
    if adapter3d is not None:
        sam = {"base": adapter3d.get("sam_base"), "vision_config": adapter3d.get("vision_config")}
        network = dict(adapter3d.get("options", {}))
    teacher = sidecar("distill_teacher.json")
    distillation = None if teacher is None else {"teacher_checkpoint": teacher["teacher_checkpoint"],
                                                 "lambda": float(teacher.get("lambda", 0.5))}
    return ModelRecord(trainer=trainer_class.__name__, prompt_encoding=sidecar("prompt_encoding.json"),
                       clinical_context=sidecar("clinical_context.json"), sam=sam, network=network,
                       distillation=distillation)


def upgrade_model_folder(folder: str) -> Optional[ModelRecord]:
    """Move an old model folder's description into its plans.json; None if it already has a record.

    The sidecar files stay (for reading; nothing uses them), the old plans keys are removed, and the original
    plans.json is kept as plans.before_upgrade.json. Checkpoints are not touched: their weights load unchanged."""
    from nnunet_prompt.io_utils import atomic_write_json
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered

    plans_file = os.path.join(folder, "plans.json")
    if not os.path.isfile(plans_file):
        raise ModelRecordError(f"'{folder}' is not an nnU-Net model folder: it has no plans.json.")
    plans = _read_json(plans_file)
    if PLANS_KEY in plans:
        return None
    ensure_trainer_path_registered()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    name = _trainer_name_of(folder)
    trainer_class = recursive_find_trainer_class_by_name(name)
    if trainer_class is None:
        raise ModelRecordError(f"Trainer '{name}' of model folder '{folder}' is not found (not in nnU-Net, not in "
                               f"nnunet-prompt's trainers).")
    if not legacy_description(folder, plans) and not hasattr(trainer_class, "network_options"):
        raise ModelRecordError(f"'{folder}' was trained by {name}, which needs no nnunet-prompt record: nothing to "
                               f"upgrade.")
    record = legacy_record(folder, plans, trainer_class)
    backup = os.path.join(folder, UPGRADE_BACKUP)
    if not os.path.isfile(backup):
        shutil.copy2(plans_file, backup + ".tmp")
        os.replace(backup + ".tmp", backup)
    for k in LEGACY_PLANS_KEYS:
        plans.pop(k, None)
    put_record(plans, record)
    atomic_write_json(plans, plans_file)
    return record

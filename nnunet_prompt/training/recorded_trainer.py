"""The trainer side of the model record (``nnunet_prompt.model_record``): write it before nnU-Net builds the
network, read it back when ``--c`` resumes.

A fresh training describes its model from the trainer class (and, where a file is involved, the environment:
``NNUNET_PROMPT_SAM_CHECKPOINT``, ``NNUNET_PROMPT_TEXT_MODEL``, ``NNUNET_PROMPT_DISTILL_TEACHER``). A resumed
training (``--c``, ``--val``) takes the record its checkpoint was trained with: nnU-Net saves the plans dict,
record included, in every checkpoint's ``init_args``, and passes the *preprocessed* plans (without a record) to
the trainer it resumes, so the record is adopted in ``load_checkpoint`` before the network is built.

Checkpoints (every trainer of nnunet-prompt passes through this mixin):

* written to a temporary file beside the target and renamed into place: nnU-Net 2.8's ``save_checkpoint`` writes
  with ``torch.save`` straight to the final name, so an interruption (time limit, full disk) mid-write leaves a
  truncated ``checkpoint_latest.pth`` that ``--c`` then picks;
* they carry the states of the trainer's own random generators (``random_generators()``, one state per DDP rank),
  so ``--c`` continues the same simulated-user stream;
* a checkpoint that does not load gives one message naming the file; under ``--c`` the other checkpoints of the
  fold (nnU-Net's order: final, latest, best) are tried, else training stops with that message.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.distributed as dist

from nnunet_prompt.io_utils import atomic_path

from nnunet_prompt.model_record import (PLANS_KEY, ModelRecord, ModelRecordError, outdated_model_message,
                                        legacy_description, put_record, record_from_plans)

RNG_KEY = "nnunet_prompt_rng"  # checkpoint key: one {name: (device type, state)} per DDP rank
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")  # run_training's order
RANK_SEED_STRIDE = 1000003  # far above any fold offset: no (fold, rank) pair shares another's seed


class CheckpointLoadError(RuntimeError):
    """A checkpoint file does not load (truncated, corrupted, not a checkpoint). The message names the file(s)."""


def _rank_and_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_seed(seed: int) -> int:
    """A per-rank seed: under DDP every rank draws its own random stream (same seed on all ranks would give every
    rank's cases the same random choices); rank 0 and single-process training keep ``seed``."""
    return int(seed) + RANK_SEED_STRIDE * _rank_and_world()[0]


def read_checkpoint(path: str, map_location) -> dict:
    import pickle
    import zipfile
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    # what torch raises for damaged files (a truncated zip: RuntimeError from its stream reader; random bytes:
    # UnpicklingError; an empty file: EOFError); other errors (a missing module, a file system error) propagate
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointLoadError(f"Checkpoint {path} does not load ({type(e).__name__}: {e}); it is truncated or "
                                  f"corrupted (was its writing interrupted?).") from e
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise CheckpointLoadError(f"Checkpoint {path} is not an nnU-Net checkpoint (no 'network_weights').")
    return checkpoint


class RecordedTrainerMixin:
    """Mix in front of nnUNetTrainer. Subclasses contribute ``record_fields()`` (cooperatively, via super()) and
    ``network_options()``; ``build_network_architecture`` reads ``record_from_plans(plans_manager.plans)``."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        # `--c` (run_training puts it into the plans; nnU-Net pops it): an unreadable checkpoint may fall back then
        self._continue_training = bool(plans.get("continue_training", False))
        super().__init__(plans, configuration, fold, dataset_json, device)

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

    # ------------------------------------------------------------- checkpoints
    def random_generators(self) -> Dict[str, torch.Generator]:
        """The trainer's own generators whose states checkpoints keep (per rank); extended by subclasses."""
        return {}

    def random_state(self) -> Dict[str, tuple]:
        return {name: (g.device.type, g.get_state()) for name, g in self.random_generators().items()}

    def restore_random_state(self, checkpoint: dict) -> None:
        saved: Optional[List[dict]] = checkpoint.get(RNG_KEY)
        if not saved:
            return  # a checkpoint from before nnunet-prompt kept them: the generators keep their seeds
        rank, world = _rank_and_world()
        if len(saved) != world:
            self.print_to_log_file(f"the checkpoint holds random generator states of {len(saved)} rank(s), this run "
                                   f"has {world}: ranks 0..{min(len(saved), world) - 1} continue their streams, "
                                   f"any other rank starts from its seed")
        if rank >= len(saved):
            return
        for name, g in self.random_generators().items():
            if name in saved[rank]:
                device_type, state = saved[rank][name]
                if device_type == g.device.type:
                    g.set_state(state.cpu())
                else:
                    self.print_to_log_file(f"random generator '{name}' was saved on {device_type}, this run uses "
                                           f"{g.device.type}: it starts from its seed")

    def save_checkpoint(self, filename: str) -> None:
        """nnUNetTrainer.save_checkpoint (2.8.1) with the generator states added and an atomic write. Its dict is
        built here again because nnU-Net builds and writes it in one step; tests/test_checkpoints.py checks that the
        keys stay nnU-Net's."""
        # every rank calls save_checkpoint (nnU-Net decides inside who writes): gather the per-rank states here
        rank, world = _rank_and_world()
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, self.random_state())
        else:
            states = [self.random_state()]
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            return super().save_checkpoint(filename)  # nnU-Net's message
        checkpoint = self.nnunet_checkpoint()
        checkpoint[RNG_KEY] = states
        with atomic_path(filename) as tmp:  # never a half-written checkpoint under the real name
            torch.save(checkpoint, tmp)

    def nnunet_checkpoint(self) -> dict:
        """The dict nnUNetTrainer.save_checkpoint (2.8.1) writes."""
        from nnunet_prompt.networks.contract import unwrap
        return {
            'network_weights': unwrap(self.network).state_dict(),
            'optimizer_state': self.optimizer.state_dict(),
            'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            'current_epoch': self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            'trainer_name': self.__class__.__name__,
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
        }

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        if isinstance(filename_or_checkpoint, str):
            path, checkpoint = self._readable_checkpoint(filename_or_checkpoint)
        else:
            path, checkpoint = None, filename_or_checkpoint
        if not self.was_initialized:
            self.adopt_record(checkpoint, path)
        # nnU-Net 2.8.1's load_checkpoint reads the file again: it handles a path, not the dict (no `else` branch)
        super().load_checkpoint(path if path is not None else filename_or_checkpoint)
        self.restore_random_state(checkpoint)
        self.restore_extra_state(checkpoint)

    def restore_extra_state(self, checkpoint: dict) -> None:
        """Trainer state beyond nnU-Net's that a subclass adds to ``nnunet_checkpoint()`` (e.g. a scheduler's)."""

    def _readable_checkpoint(self, path: str) -> Tuple[str, dict]:
        """(path, checkpoint) of ``path``, or under ``--c`` of the first other checkpoint of its fold that loads."""
        try:
            # on the CPU: nnU-Net's load_checkpoint reads the file again onto the device (no two device copies)
            return path, read_checkpoint(path, "cpu")
        except CheckpointLoadError as e:
            error = e
        folder = os.path.dirname(os.path.abspath(path))
        others = [os.path.join(folder, n) for n in CHECKPOINT_NAMES
                  if n != os.path.basename(path) and os.path.isfile(os.path.join(folder, n))]
        if not self._continue_training:  # --val, --val_best, prediction: no silent switch to another model
            raise error
        if not others:
            raise CheckpointLoadError(f"{error} No other checkpoint of this fold to continue from: delete it and "
                                      f"train anew (without --c).") from error.__cause__
        failures = [str(error)]
        for other in others:
            try:
                checkpoint = read_checkpoint(other, "cpu")
            except CheckpointLoadError as e:
                failures.append(str(e))
                continue
            self.print_to_log_file(f"{error} Continuing from {other} instead.", also_print_to_console=True)
            return other, checkpoint
        raise CheckpointLoadError(" ".join(failures) + " No checkpoint of this fold loads: train anew (without --c).")

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

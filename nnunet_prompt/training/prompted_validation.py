"""nnU-Net's final validation, run with each case's prompts (simulated clicks/boxes, or its clinical text).

nnU-Net's ``perform_actual_validation`` feeds the bare image to the network, which for a prompt model
would measure nothing useful. ``validate_cases`` is nnU-Net's ``perform_actual_validation`` (2.8) with one
change: the trainer predicts each case its way. It keeps nnU-Net's pieces as nnU-Net uses them: the dataset
class, the split and its distribution over DDP ranks, the sliding-window predictor, the export through a
``spawn`` pool of ``default_num_processes`` workers (``export_prediction_from_logits`` via ``starmap_async``, with
``check_workers_alive_and_busy`` so that queued logits do not fill the memory), its DDP barriers, and
``compute_metrics_on_folder`` on the dataset's regions (region datasets) or labels, written to ``summary.json``.

``run_prompted_validation`` adds, per validation case and per label (region, in a region dataset) present in
its reference, a simulated initial prompt from that label's mask (the union of the region's label values; the
trainer's ``validation_prompt_type``, seeded); text trainers give the case's clinical text. The cascade's
next-stage export is not supported for prompt models.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import zlib
import warnings
from time import sleep
from typing import Callable, Tuple

import numpy as np
import torch
import torch.distributed as dist

from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.file_path_utilities import check_workers_alive_and_busy

from nnunet_prompt.interaction.simulation import InteractionSimulator
from nnunet_prompt.io_utils import atomic_write_json
from nnunet_prompt.prompts.regions_or_labels import as_json, sorted_targets, target_mask


def evaluated_regions_or_labels(trainer) -> list:
    """What nnU-Net's final validation evaluates: the dataset's foreground regions for a region dataset, else its
    foreground labels. From the dataset's own label manager (a prompt trainer trains with a label view of a region
    dataset, see ``regions_or_labels.training_label_manager``)."""
    lm = trainer.plans_manager.get_label_manager(trainer.dataset_json)
    return lm.foreground_regions if lm.has_regions else lm.foreground_labels


def validate_cases(trainer, predict_case: Callable[[str, torch.Tensor, np.ndarray], Tuple[torch.Tensor, dict]],
                   record_name: str, save_probabilities: bool = False) -> None:
    """predict_case(case id, preprocessed data, reference seg) -> (logits over the dataset's classes (regions), a
    note on what the case was given, collected into ``validation/<record_name>_rank<r>.json``)."""
    out_folder = os.path.join(trainer.output_folder, 'validation')
    notes = {}
    with multiprocessing.get_context("spawn").Pool(default_num_processes) as segmentation_export_pool:
        worker_list = [i for i in segmentation_export_pool._pool]
        os.makedirs(out_folder, exist_ok=True)
        _, val_keys = trainer.do_split()
        if trainer.is_ddp:
            last_barrier_at_idx = len(val_keys) // dist.get_world_size() - 1
            val_keys = val_keys[trainer.local_rank:: dist.get_world_size()]
        dataset_val = trainer.dataset_class(trainer.preprocessed_dataset_folder, val_keys,
                                            folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
        if trainer.configuration_manager.next_stage_names is not None:
            trainer.print_to_log_file("prompted validation: the next stage's inputs (predicted_next_stage) are not "
                                      "exported for prompt models")
        results = []
        for i, k in enumerate(dataset_val.identifiers):
            proceed = not check_workers_alive_and_busy(segmentation_export_pool, worker_list, results,
                                                       allowed_num_queued=2)
            while not proceed:
                sleep(0.1)
                proceed = not check_workers_alive_and_busy(segmentation_export_pool, worker_list, results,
                                                           allowed_num_queued=2)
            data, seg, _, properties = dataset_val.load_case(k)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # 'The given NumPy array is not writable'
                data = torch.from_numpy(np.asarray(data[:]))
            with torch.no_grad():
                logits, notes[k] = predict_case(k, data, np.asarray(seg[:])[0])
            results.append(segmentation_export_pool.starmap_async(
                export_prediction_from_logits,
                ((logits.float().cpu(), properties, trainer.configuration_manager, trainer.plans_manager,
                  trainer.dataset_json, os.path.join(out_folder, k), save_probabilities),)))
            # as nnU-Net: without a barrier from time to time, large datasets run into NCCL timeouts
            if trainer.is_ddp and i < last_barrier_at_idx and (i + 1) % 20 == 0:
                dist.barrier()
        _ = [r.get() for r in results]
    atomic_write_json(notes, os.path.join(out_folder, f"{record_name}_rank{trainer.local_rank}.json"))

    if trainer.is_ddp:
        dist.barrier()
    if trainer.local_rank == 0:
        # one record of what every case was given, whichever rank predicted it
        world = dist.get_world_size() if trainer.is_ddp else 1
        merged = {}
        for r in range(world):
            with open(os.path.join(out_folder, f"{record_name}_rank{r}.json"), encoding="utf-8") as f:
                merged.update(json.load(f))
        atomic_write_json(dict(sorted(merged.items())), os.path.join(out_folder, f"{record_name}.json"))
        lm = trainer.plans_manager.get_label_manager(trainer.dataset_json)
        metrics = compute_metrics_on_folder(
            os.path.join(trainer.preprocessed_dataset_folder_base, 'gt_segmentations'), out_folder,
            os.path.join(out_folder, 'summary.json'), trainer.plans_manager.image_reader_writer_class(),
            trainer.dataset_json["file_ending"], evaluated_regions_or_labels(trainer), lm.ignore_label, chill=True,
            num_processes=default_num_processes * dist.get_world_size() if trainer.is_ddp else default_num_processes)
        for label in metrics["mean"]:
            trainer.logger.log_summary(f"final_val/class_{label}_dice", metrics["mean"][label]["Dice"])
        trainer.logger.log_summary("final_val/foreground_dice", metrics['foreground_mean']["Dice"])
        trainer.print_to_log_file(f"Validation (with {record_name.replace('_', ' ')}) complete",
                                  also_print_to_console=True)
        trainer.print_to_log_file("Mean Validation Dice: ", metrics['foreground_mean']["Dice"],
                                  also_print_to_console=True)
    compute_gaussian.cache_clear()


def run_prompted_validation(trainer, save_probabilities: bool = False, case_entry=None) -> None:
    """``case_entry(case) -> clinical entry``: for models that read text beside the prompts (TextAndPromptTrainer),
    every label's pass of a case is conditioned on that case's text as well."""
    from nnunet_prompt.inference.predictor import PromptPredictor

    predictor = PromptPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=True, device=trainer.device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    predictor.prompt_encoding = trainer.prompt_encoding
    if case_entry is not None:
        predictor.clinical_context = trainer.context_config
        predictor.position_channels = trainer.context_config.position_channels  # before the prompt channels

    types = trainer.simulation_policy.initial_types
    prompt_type = trainer.validation_prompt_type if trainer.validation_prompt_type in types else types[0]
    # 2d models are prompted slice by slice, as in training: one prompt per target per slice
    slice_wise = len(trainer.configuration_manager.spacing) == 2
    simulator = InteractionSimulator(trainer.prompt_encoding, trainer.simulation_spacing(),
                                     trainer.simulation_policy, seed=trainer.simulation_seed, device=trainer.device)
    # labels, or in a region dataset regions (tuples of label values): what a prompt addresses
    kind = "regions" if predictor.label_manager.has_regions else "labels"

    def predict_case(k, data, seg):
        # seeded per case, so a case gets the same prompts whichever rank (and however many GPUs) predicts it
        simulator.generator.manual_seed(int(trainer.simulation_seed) + zlib.crc32(k.encode()))
        channels = {}
        for name, target in trainer.target_labels.items():
            obj = torch.from_numpy(target_mask(seg, target)).to(trainer.device)
            if not bool(obj.any()):
                continue
            if slice_wise:  # slices as a batch of one-slice volumes -> (C, Z, Y, X)
                channels[target] = simulator.initial_prompts(obj[:, None], [prompt_type] * obj.shape[0])[:, :, 0] \
                    .transpose(0, 1).cpu()
            else:
                channels[target] = simulator.initial_prompts(obj[None], [prompt_type])[0].cpu()
        given = [as_json(t) for t in sorted_targets(channels)]
        trainer.print_to_log_file(f"predicting {k} with simulated '{prompt_type}' prompts for {kind} {given}")
        note = {kind: given, "prompt": prompt_type}
        if case_entry is not None:
            predictor._current_case_entry = case_entry(k)
            note["text"] = predictor._current_case_entry.get("text")
        return predictor.predict_prompted_logits(data, channels), note

    validate_cases(trainer, predict_case, "simulated_prompts", save_probabilities)

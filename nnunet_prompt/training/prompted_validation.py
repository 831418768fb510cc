"""nnU-Net's final validation, run with each case's prompts (simulated clicks/boxes, or its clinical text).

nnU-Net's ``perform_actual_validation`` feeds the bare image to the network, which for a prompt model
would measure nothing useful. ``validate_cases`` keeps nnU-Net's pieces (dataset class, split, sliding-window
predictor, ``export_prediction_from_logits``, ``compute_metrics_on_folder`` and ``summary.json``) and
lets the trainer predict each case its way: ``run_prompted_validation`` adds, per validation case and
per label present in its reference, a simulated initial prompt from that label (the trainer's
``validation_prompt_type``, seeded); text trainers give the case's clinical text. Predictions are exported one case at a
time; the cascade's next-stage export is not supported for prompt models.
"""
from __future__ import annotations

import os
from typing import Callable, Tuple

import numpy as np
import torch
import torch.distributed as dist

from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.inference.export_prediction import export_prediction_from_logits

from nnunet_prompt.interaction.simulation import InteractionSimulator
from nnunet_prompt.io_utils import atomic_write_json


def validate_cases(trainer, predict_case: Callable[[str, torch.Tensor, np.ndarray], Tuple[torch.Tensor, dict]],
                   record_name: str, save_probabilities: bool = False) -> None:
    """predict_case(case id, preprocessed data, reference seg) -> (logits over the dataset's classes, a note
    on what the case was given, collected into ``validation/<record_name>_rank<r>.json``)."""
    out_folder = os.path.join(trainer.output_folder, 'validation')
    os.makedirs(out_folder, exist_ok=True)
    _, val_keys = trainer.do_split()
    if trainer.is_ddp:
        val_keys = val_keys[trainer.local_rank:: dist.get_world_size()]
    dataset_val = trainer.dataset_class(trainer.preprocessed_dataset_folder, val_keys,
                                        folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    notes = {}
    for k in dataset_val.identifiers:
        data, seg, _, properties = dataset_val.load_case(k)
        data = torch.from_numpy(np.asarray(data[:]))
        with torch.no_grad():
            logits, notes[k] = predict_case(k, data, np.asarray(seg[:])[0])
        export_prediction_from_logits(logits.float().cpu().numpy(), properties, trainer.configuration_manager,
                                      trainer.plans_manager, trainer.dataset_json, os.path.join(out_folder, k),
                                      save_probabilities)
    atomic_write_json(notes, os.path.join(out_folder, f"{record_name}_rank{trainer.local_rank}.json"))

    if trainer.is_ddp:
        dist.barrier()
    if trainer.local_rank == 0:
        lm = trainer.label_manager
        metrics = compute_metrics_on_folder(
            os.path.join(trainer.preprocessed_dataset_folder_base, 'gt_segmentations'), out_folder,
            os.path.join(out_folder, 'summary.json'), trainer.plans_manager.image_reader_writer_class(),
            trainer.dataset_json["file_ending"], lm.foreground_labels, lm.ignore_label, chill=True,
            num_processes=default_num_processes)
        for label in metrics["mean"]:
            trainer.logger.log_summary(f"final_val/class_{label}_dice", metrics["mean"][label]["Dice"])
        trainer.logger.log_summary("final_val/foreground_dice", metrics['foreground_mean']["Dice"])
        trainer.print_to_log_file(f"Validation (with {record_name.replace('_', ' ')}) complete",
                                  also_print_to_console=True)
        trainer.print_to_log_file("Mean Validation Dice: ", metrics['foreground_mean']["Dice"],
                                  also_print_to_console=True)


def run_prompted_validation(trainer, save_probabilities: bool = False) -> None:
    from nnunet_prompt.inference.predictor import PromptPredictor

    predictor = PromptPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=True, device=trainer.device, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    predictor.prompt_encoding = trainer.prompt_encoding

    types = trainer.simulation_policy.initial_types
    prompt_type = trainer.validation_prompt_type if trainer.validation_prompt_type in types else types[0]
    spacing = list(trainer.configuration_manager.spacing)
    slice_wise = len(spacing) == 2
    if slice_wise:  # 2d models are prompted slice by slice, as in training: one prompt per target per slice
        spacing = [float(trainer.plans_manager.plans['original_median_spacing_after_transp'][0])] + spacing
    simulator = InteractionSimulator(trainer.prompt_encoding, spacing,
                                     trainer.simulation_policy, seed=trainer.simulation_seed, device=trainer.device)

    def predict_case(k, data, seg):
        channels = {}
        for name, label in trainer.target_labels.items():
            obj = torch.from_numpy(seg == label).to(trainer.device)
            if not bool(obj.any()):
                continue
            if slice_wise:  # slices as a batch of one-slice volumes -> (C, Z, Y, X)
                channels[label] = simulator.initial_prompts(obj[:, None], [prompt_type] * obj.shape[0])[:, :, 0] \
                    .transpose(0, 1).cpu()
            else:
                channels[label] = simulator.initial_prompts(obj[None], [prompt_type])[0].cpu()
        trainer.print_to_log_file(f"predicting {k} with simulated '{prompt_type}' prompts for labels {sorted(channels)}")
        return predictor.predict_prompted_logits(data, channels), {"labels": sorted(channels), "prompt": prompt_type}

    validate_cases(trainer, predict_case, "simulated_prompts", save_probabilities)

"""Knowledge distillation (AutoSAM Adapter, §3.5, eq. 2): the loss, and loading a trained nnU-Net fold as the teacher.

L_tot = λ·L_seg + (1 − λ)·MSE(student probabilities, teacher probabilities), with L_seg nnU-Net's own loss
(Dice + CE, with deep supervision when the student has it). The MSE compares full-resolution probabilities
(softmax, or sigmoid for region-based labels: the label manager's inference non-linearity) on the voxels
that are not nnU-Net's ignore label.

The teacher is any fold that nnU-Net trained (in practice a SAMAdapter3DTrainer fold): nnU-Net's own predictor
initialisation (``nnUNetPredictor.initialize_from_trained_model_folder``) rebuilds and loads it from the fold's
plans.json and checkpoint, then it is frozen. It is kept outside the student's module tree, so it is in none of the
student's checkpoints and the student stays a plain nnU-Net network.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

import torch
from torch import nn

TEACHER_ENV_VAR = "NNUNET_PROMPT_DISTILL_TEACHER"
_CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")


class TeacherError(ValueError):
    """The teacher is missing or does not fit the student. The message names the path and the fix."""


class DistillationLoss(nn.Module):
    def __init__(self, seg_loss: nn.Module, lam: float, nonlin: Callable[[torch.Tensor], torch.Tensor],
                 ignore_label: Optional[int] = None):
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"λ must lie in [0, 1], got {lam}")
        self.seg_loss = seg_loss
        self.lam = float(lam)
        self.nonlin = nonlin
        self.ignore_label = ignore_label
        self.teacher_probs: Optional[torch.Tensor] = None  # set per batch by the trainer; None: L_seg alone

    def forward(self, output, target) -> torch.Tensor:
        seg = self.seg_loss(output, target)
        if self.teacher_probs is None:
            return seg
        out = output[0] if isinstance(output, (list, tuple)) else output
        sq = (self.nonlin(out.float()) - self.teacher_probs.float()).square()
        if self.ignore_label is not None:
            t = target[0] if isinstance(target, (list, tuple)) else target
            keep = (t != self.ignore_label).to(sq.dtype)
            mse = (sq * keep).sum() / (keep.sum() * sq.shape[1]).clamp_min(1)
        else:
            mse = sq.mean()
        return self.lam * seg + (1.0 - self.lam) * mse


def resolve_teacher(path: str) -> Tuple[str, str]:
    """A fold folder (…/Trainer__Plans__config/fold_0) or a checkpoint file inside one -> (model folder, file)."""
    if not path:
        raise TeacherError(f"No teacher: set {TEACHER_ENV_VAR} to a trained SAMAdapter3DTrainer fold folder (e.g. "
                           f"$nnUNet_results/DatasetXXX/SAMAdapter3DTrainer__nnUNetPlansSAM3D__3d_fullres/fold_0) or "
                           f"a checkpoint file inside one.")
    path = os.path.abspath(path)
    if os.path.isfile(path):
        checkpoint = path
    elif os.path.isdir(path):
        found = [os.path.join(path, c) for c in _CHECKPOINTS if os.path.isfile(os.path.join(path, c))]
        if not found:
            folds = sorted(d for d in os.listdir(path) if d.startswith("fold_"))
            hint = f" It holds {', '.join(folds)}: name one of them." if folds else ""
            raise TeacherError(f"Teacher folder {path!r} holds no {' / '.join(_CHECKPOINTS)}.{hint}")
        checkpoint = found[0]
    else:
        raise TeacherError(f"Teacher {path!r} (from {TEACHER_ENV_VAR}) does not exist.")
    model_folder = os.path.dirname(os.path.dirname(checkpoint))
    for f in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(model_folder, f)):
            raise TeacherError(f"{os.path.join(model_folder, f)!r} is missing: the teacher checkpoint must lie in "
                               f"a fold folder of an nnU-Net model folder (…/Trainer__Plans__config/fold_X/).")
    return model_folder, checkpoint


def check_compatible(teacher_pm, teacher_cm, teacher_dataset: dict, student_pm, student_cm, student_dataset: dict,
                     where: str) -> None:
    """The teacher sees the student's batches: same dataset, labels, channels, spacing, normalisation, patch.
    *_pm / *_cm: nnU-Net's PlansManager / ConfigurationManager of each."""
    problems = []
    if teacher_pm.dataset_name != student_pm.dataset_name:
        problems.append(f"dataset {teacher_pm.dataset_name} vs {student_pm.dataset_name}")
    for key in ("labels", "channel_names"):
        if teacher_dataset.get(key) != student_dataset.get(key):
            problems.append(f"dataset.json '{key}' {teacher_dataset.get(key)} vs {student_dataset.get(key)}")
    if list(teacher_pm.transpose_forward) != list(student_pm.transpose_forward):
        problems.append("transpose_forward differs")
    for attr in ("spacing", "patch_size", "normalization_schemes", "use_mask_for_norm"):
        a, b = list(getattr(teacher_cm, attr)), list(getattr(student_cm, attr))
        if a != b:
            problems.append(f"{attr} {a} vs {b}")
    if problems:
        raise TeacherError(f"The teacher {where} does not fit this student (teacher vs student: "
                           f"{'; '.join(problems)}). Train the teacher on the same dataset and plans as the student "
                           f"(e.g. both with -p nnUNetPlansSAM3D), or point {TEACHER_ENV_VAR} at such a fold.")


def load_teacher(path: str, student_pm, student_cm, student_dataset: dict,
                 device: torch.device) -> Tuple[nn.Module, str]:
    """The frozen teacher network (eval mode, no gradients) and its checkpoint path, rebuilt and loaded by
    nnU-Net's own predictor initialisation."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered

    model_folder, checkpoint_file = resolve_teacher(path)
    fold = os.path.basename(os.path.dirname(checkpoint_file))[len("fold_"):]
    ensure_trainer_path_registered()  # the teacher's trainer is one of ours
    predictor = nnUNetPredictor(use_mirroring=False, device=device, verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (fold if fold == "all" else int(fold),),
                                                   os.path.basename(checkpoint_file))
    check_compatible(predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json, student_pm,
                     student_cm, student_dataset, repr(checkpoint_file))
    network = predictor.network  # weights of that fold already loaded
    network.eval().requires_grad_(False)
    return network.to(device), checkpoint_file


@torch.no_grad()
def teacher_probabilities(teacher: nn.Module, data: torch.Tensor, nonlin) -> torch.Tensor:
    out = teacher(data)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return nonlin(out.float())


def narrowed_plans(plans: dict, configuration: str, divisor: int) -> dict:
    """A copy of the plans whose U-Net for `configuration` has every feature width divided by `divisor`
    (a smaller student; the copy is what nnU-Net saves beside the student, so prediction rebuilds it)."""
    from copy import deepcopy

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = deepcopy(plans)
    arch = deepcopy(PlansManager(plans).get_configuration(configuration).configuration["architecture"])
    kwargs = arch["arch_kwargs"]
    kwargs["features_per_stage"] = [max(1, int(f) // divisor) for f in kwargs["features_per_stage"]]
    plans["configurations"][configuration]["architecture"] = arch
    return plans

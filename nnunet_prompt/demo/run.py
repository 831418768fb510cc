"""`nnunet-prompt demo`: plain nnU-Net against PromptTrainer on the synthetic head-and-neck phantom.

Steps (each printed as it runs):
 1. generate the synthetic dataset (datasets_conversion/synthetic_hn.py) into <workdir>/nnUNet_raw;
 2. nnU-Net's own fingerprint extraction, planning (NarrowUNetPlanner: nnU-Net's plans with widths / 4,
    sized for a CPU) and preprocessing;
 3. `nnUNetv2_train ... -tr nnUNetTrainer_demo` and `-tr PromptTrainer_demo`, same plans, same fold,
    same schedule, through nnU-Net's own command;
 4. prediction of the held-out cases: the baseline with nnU-Net's predictor, PromptTrainer with a box
    and a click per case derived from the held-out labels as a user would draw them (prompts.json);
 5. Dice with nnU-Net's own evaluation, a table, summary.json and a PNG of one held-out case.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

from nnunet_prompt.io_utils import atomic_path, atomic_write_json

DATASET_ID = 990
DATASET_NAME = "SyntheticHN"
CONFIG = "3d_fullres"
PLANS = "nnUNetPlansNarrow"
FOLD = 0
BASELINE = "nnUNetTrainer_demo"
PROMPTED = "PromptTrainer_demo"
DEMO_SHAPE_XYZ = (48, 48, 24)
DEMO_SPACING_XYZ = (2.5, 2.5, 3.0)


def _step(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def _bin(name: str) -> str:
    """A console script of this environment (nnUNetv2_train, ...)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def _run(cmd: List[str], log_path: str, env: dict) -> None:
    print("$ " + " ".join(cmd), flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            # nnU-Net is verbose; show the lines a user follows: epochs, losses, Dice, timings
            if any(k in line for k in ("Epoch ", "train_loss", "Pseudo dice", "Epoch time", "Mean Validation Dice",
                                       "prompt simulation", "Error", "error", "Traceback")):
                print("   " + line.rstrip(), flush=True)
        if proc.wait() != 0:
            raise RuntimeError(f"Command failed ({proc.returncode}): {' '.join(cmd)}. Full log: {log_path}")


def _evaluate(gt_folder: str, pred_folder: str, dataset_json: dict) -> Dict[str, float]:
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    res = compute_metrics_on_folder(gt_folder, pred_folder, os.path.join(pred_folder, "summary.json"), SimpleITKIO(),
                                    dataset_json["file_ending"], [1], None, num_processes=1, chill=False)
    return {os.path.basename(c["reference_file"]).split(".")[0]: float(c["metrics"][1]["Dice"])
            for c in res["metric_per_case"]}


def plot_case(image_path: str, gt_path: str, base_path: str, prompt_path: str, prompt: dict, out_png: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    from matplotlib.patches import Rectangle

    img = sitk.ReadImage(image_path)
    arr = sitk.GetArrayFromImage(img)
    gt, base, prom = (sitk.GetArrayFromImage(sitk.ReadImage(p)) > 0 for p in (gt_path, base_path, prompt_path))
    click = img.TransformPhysicalPointToContinuousIndex(prompt["positive_points"][0])
    lo = img.TransformPhysicalPointToContinuousIndex(prompt["boxes"][0]["min"])
    hi = img.TransformPhysicalPointToContinuousIndex(prompt["boxes"][0]["max"])
    z = int(round(click[2]))
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    panels = [("image + prompt", None), ("ground truth", gt), ("nnU-Net baseline", base), ("PromptTrainer (box + click)", prom)]
    for ax, (title, mask) in zip(axes, panels):
        ax.imshow(np.clip(arr[z], -200, 300), cmap="gray", origin="upper")
        if mask is not None and mask[z].any():
            ax.contour(mask[z], levels=[0.5], colors=["#ff3b30"], linewidths=1.6)
        elif mask is not None:
            ax.text(0.5, 0.04, "nothing segmented on this slice", color="white", ha="center",
                    transform=ax.transAxes, fontsize=9)
        ax.add_patch(Rectangle((lo[0] - 0.5, lo[1] - 0.5), hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, fill=False,
                               edgecolor="#00c7ff", linewidth=1.2, linestyle="--"))
        ax.plot([click[0]], [click[1]], marker="+", color="#ffd60a", markersize=14, mew=2.5)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"{os.path.basename(image_path)}, axial slice {z}: two look-alike lesions, the prompt picks the target")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def run_demo(workdir: str = "demo_work", num_training: int = 20, num_test: int = 12, device: str = "cpu",
             num_processes: int = 2, keep: bool = False) -> dict:
    t_start = time.time()
    workdir = os.path.abspath(workdir)
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
    env_dirs = {k: os.path.join(workdir, k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    if not keep:
        for d in (env_dirs["nnUNet_preprocessed"], env_dirs["nnUNet_results"]):
            if os.path.isdir(d):
                shutil.rmtree(d)
    for k, d in env_dirs.items():
        os.makedirs(d, exist_ok=True)
        os.environ[k] = d
    ensure_trainer_path_registered()
    os.environ.setdefault("nnUNet_compile", "0")
    # nnU-Net starts 8 worker processes by default for export and evaluation; a small machine pays for that
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(num_processes, os.cpu_count() or 1))))
    env = dict(os.environ)
    env.setdefault("nnUNet_n_proc_DA", "1" if device == "cpu" else "8")
    minutes = {}

    _step("1/5 generating the synthetic head-and-neck dataset")
    t = time.time()
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    # small volumes (48 x 48 x 24 voxels of 2.5 x 2.5 x 3 mm) keep an iteration at ~0.2 s on 2 CPU cores
    raw = generate_synthetic_hn_dataset(env_dirs["nnUNet_raw"], DATASET_ID, DATASET_NAME, num_training, num_test,
                                        shape_xyz=DEMO_SHAPE_XYZ, spacing_xyz=DEMO_SPACING_XYZ, overwrite=True)
    print(f"   {raw}: {num_training} training and {num_test} held-out cases")
    minutes["generate"] = (time.time() - t) / 60

    _step("2/5 nnU-Net fingerprint, planning (NarrowUNetPlanner) and preprocessing")
    t = time.time()
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunet_prompt_planners.narrow_planner import NarrowUNetPlanner
    extract_fingerprint_dataset(DATASET_ID, num_processes=num_processes, check_dataset_integrity=True,
                                show_progress_bar=False, verbose=False)
    plan_experiment_dataset(DATASET_ID, NarrowUNetPlanner)
    preprocess_dataset(DATASET_ID, PLANS, (CONFIG,), [num_processes], show_progress_bar=False)
    minutes["plan_and_preprocess"] = (time.time() - t) / 60

    train_minutes = {}
    for i, trainer in enumerate((BASELINE, PROMPTED)):
        _step(f"3/5 training {trainer} ({'baseline, image only' if i == 0 else 'prompt channels'})")
        t = time.time()
        _run([_bin("nnUNetv2_train"), str(DATASET_ID), CONFIG, str(FOLD), "-tr", trainer, "-p", PLANS,
              "-device", device], os.path.join(workdir, f"train_{trainer}.log"), env)
        train_minutes[trainer] = (time.time() - t) / 60

    _step("4/5 predicting the held-out cases")
    t = time.time()
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunet_prompt.inference.predictor import PromptPredictor
    from nnunet_prompt.interaction.user_prompts import prompt_from_label
    from nnunet_prompt.prompts.model import parse_prompts
    images_ts = os.path.join(raw, "imagesTs")
    labels_ts = os.path.join(raw, "labelsTs")
    cases = sorted(f[:-len(".nii.gz")] for f in os.listdir(labels_ts) if f.endswith(".nii.gz"))
    prompts = {c: prompt_from_label(os.path.join(labels_ts, c + ".nii.gz")) for c in cases}
    prompts_file = os.path.join(workdir, "prompts_heldout.json")
    atomic_write_json(prompts, prompts_file)
    print(f"   prompts (a box and a click per case, world mm) written to {prompts_file}")
    results_root = os.path.join(env_dirs["nnUNet_results"], f"Dataset{DATASET_ID:03d}_{DATASET_NAME}")
    dev = torch.device(device)
    preds = {}
    for trainer, cls in ((BASELINE, nnUNetPredictor), (PROMPTED, PromptPredictor)):
        out = os.path.join(workdir, "predictions", trainer)
        if os.path.isdir(out):
            shutil.rmtree(out)
        predictor = cls(tile_step_size=0.5, use_mirroring=True, device=dev, allow_tqdm=False, verbose=False)
        predictor.initialize_from_trained_model_folder(os.path.join(results_root, f"{trainer}__{PLANS}__{CONFIG}"),
                                                       (FOLD,), "checkpoint_final.pth")
        if cls is PromptPredictor:
            predictor.set_prompts(parse_prompts(prompts, prompts_file), prompts_file)
        predictor.predict_from_files(images_ts, out, save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
        preds[trainer] = out
    minutes["predict"] = (time.time() - t) / 60

    _step("5/5 evaluation (nnU-Net's compute_metrics_on_folder)")
    with open(os.path.join(raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    dice = {tr: _evaluate(labels_ts, preds[tr], dataset_json) for tr in preds}
    means = {tr: float(np.mean(list(d.values()))) for tr, d in dice.items()}
    minutes["total"] = (time.time() - t_start) / 60

    png = os.path.join(workdir, "heldout_case.png")
    # show the case where the prompt made the largest difference
    c = max(cases, key=lambda k: dice[PROMPTED][k] - dice[BASELINE][k])
    plot_case(os.path.join(images_ts, c + "_0000.nii.gz"), os.path.join(labels_ts, c + ".nii.gz"),
              os.path.join(preds[BASELINE], c + ".nii.gz"), os.path.join(preds[PROMPTED], c + ".nii.gz"),
              prompts[c], png)

    summary = {
        "dataset": f"Dataset{DATASET_ID:03d}_{DATASET_NAME}", "configuration": CONFIG, "plans": PLANS, "fold": FOLD,
        "device": device, "held_out_cases": len(cases),
        "trainers": {
            BASELINE: {"mean_dice": means[BASELINE], "prompts": "none (image only)",
                       "train_minutes": train_minutes[BASELINE], "dice_per_case": dice[BASELINE]},
            PROMPTED: {"mean_dice": means[PROMPTED], "prompts": "1 box + 1 positive click per case (world mm)",
                       "train_minutes": train_minutes[PROMPTED], "dice_per_case": dice[PROMPTED]},
        },
        "dice_gain": means[PROMPTED] - means[BASELINE],
        "minutes": minutes, "prompts_file": prompts_file, "figure": png,
    }
    if means[PROMPTED] < 0.5:
        summary["warning"] = ("PromptTrainer did not learn to use the image in this run (known instability of the "
                              "short CPU schedule, see docs/explanation/design.md); rerun the demo.")
    atomic_write_json(summary, os.path.join(workdir, "summary.json"))

    print("\n" + "-" * 78)
    print(f"{'trainer':<22}{'held-out Dice':>14}   {'prompts':<34}{'train min':>9}")
    for tr in (BASELINE, PROMPTED):
        s = summary["trainers"][tr]
        print(f"{tr:<22}{s['mean_dice']:>14.3f}   {s['prompts']:<34}{s['train_minutes']:>9.1f}")
    print("-" * 78)
    print(f"Dice gain from prompts: {summary['dice_gain']:+.3f}   total time: {minutes['total']:.1f} min")
    print(f"summary: {os.path.join(workdir, 'summary.json')}\nfigure:  {png}")
    if "warning" in summary:
        print(f"WARNING: {summary['warning']}")
    return summary

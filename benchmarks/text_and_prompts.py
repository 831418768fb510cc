"""One model for text and clicks (TextAndPromptTrainer) next to the text-only and the click-only model.

    python benchmarks/text_and_prompts.py --workdir /tmp/tp_bench --epochs 8 --out benchmarks/RESULTS.md

Data: the synthetic head-and-neck phantom with ``nodal_involvement=0``: two look-alike lesions per case, the
tumour (the single label) is one of them, and the clinical text's side ("Left-sided tumour, ...") says which.
The image alone cannot tell.

Steps: nnU-Net plans (NarrowUNetPlanner) and preprocesses; `nnUNetv2_train` trains TextPromptTrainer_demo (text),
PromptTrainer_demo (clicks and boxes; there is no clicks-only PromptTrainer variant, it is prompted with one click
here) and TextAndPromptTrainer_demo on the same plans, fold and schedule; the held-out cases are predicted through
``PromptPredictor`` with a prompts file per arm: the case's text, one click (the tumour's most interior voxel,
world mm, as the demo's), or both. Reported: held-out tumour Dice per arm (mean over cases).
Writes <workdir>/text_and_prompts.json and appends a markdown section to --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

DATASET_ID, NAME, CONFIG, PLANS, FOLD = 984, "TextAndClicksHN", "3d_fullres", "nnUNetPlansNarrow", 0
TEXT, CLICKS, BOTH = "TextPromptTrainer_demo", "PromptTrainer_demo", "TextAndPromptTrainer_demo"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="text_and_prompts_bench")
    p.add_argument("--num-training", type=int, default=16)
    p.add_argument("--num-test", type=int, default=8)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=8, help="epochs of 60 iterations for every trainer (demo schedule)")
    p.add_argument("--out", default=None, help="append the markdown result to this file")
    p.add_argument("--trainers", nargs="+", default=[TEXT, CLICKS, BOTH], help="train and evaluate only these")
    a = p.parse_args(argv)

    import SimpleITK as sitk
    import torch
    from common import nnunet_workdir, report
    from nnunet_prompt.demo.run import _bin, _run
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
    work = os.path.abspath(a.workdir)
    nnunet_workdir(work)
    ensure_trainer_path_registered()
    os.environ.setdefault("nnUNet_compile", "0")
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    env = dict(os.environ, nnUNet_n_proc_DA=os.environ.get("nnUNet_n_proc_DA", "1"),
               NNUNET_PROMPT_DEMO_EPOCHS=str(a.epochs))
    t_start = time.time()

    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunet_prompt_planners.narrow_planner import NarrowUNetPlanner
    raw = generate_synthetic_hn_dataset(os.environ["nnUNet_raw"], DATASET_ID, NAME, a.num_training, a.num_test,
                                        shape_xyz=(48, 48, 24), spacing_xyz=(2.5, 2.5, 3.0), nodal_involvement=0)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    if not os.path.isfile(os.path.join(pre, PLANS + ".json")):
        extract_fingerprint_dataset(DATASET_ID, num_processes=2, check_dataset_integrity=True, show_progress_bar=False)
        plan_experiment_dataset(DATASET_ID, NarrowUNetPlanner)
        preprocess_dataset(DATASET_ID, PLANS, (CONFIG,), [2], show_progress_bar=False)

    results = os.path.join(os.environ["nnUNet_results"], os.path.basename(raw))
    minutes = {}
    for trainer in a.trainers:
        final = os.path.join(results, f"{trainer}__{PLANS}__{CONFIG}", f"fold_{FOLD}", "checkpoint_final.pth")
        if not os.path.isfile(final):
            t = time.time()
            _run([_bin("nnUNetv2_train"), str(DATASET_ID), CONFIG, str(FOLD), "-tr", trainer, "-p", PLANS,
                  "-device", a.device], os.path.join(work, f"train_{trainer}.log"), env)
            minutes[trainer] = (time.time() - t) / 60

    from nnunet_prompt.clinical_text import read_sidecar
    from nnunet_prompt.evaluation.text_analysis import dice
    from nnunet_prompt.inference.predictor import PromptPredictor
    from nnunet_prompt.interaction.user_prompts import prompt_from_label
    from nnunet_prompt.prompts.model import parse_prompts
    texts = read_sidecar(raw)
    images, labels = os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs")
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(images))
    clicks = {c: prompt_from_label(os.path.join(labels, c + ".nii.gz"))["positive_points"] for c in cases}
    given = {"text": lambda c: {"text": texts[c]["text"]},
             "1 click": lambda c: {"coordinates": "mm", "positive_points": clicks[c]},
             "text + 1 click": lambda c: {"coordinates": "mm", "positive_points": clicks[c], "text": texts[c]["text"]}}
    arms = [(t, w) for t, w in ((TEXT, "text"), (CLICKS, "1 click"), (BOTH, "text"), (BOTH, "1 click"),
                                (BOTH, "text + 1 click")) if t in a.trainers]
    refs = {c: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(labels, c + ".nii.gz"))) == 1 for c in cases}
    dev = torch.device(a.device)
    summary = {"arms": [], "train_minutes": minutes}
    for trainer, what in arms:
        out = os.path.join(work, "predictions", f"{trainer}_{what.replace(' ', '').replace('+', '_')}")
        pr = PromptPredictor(tile_step_size=0.5, use_mirroring=True, device=dev, allow_tqdm=False, verbose=False)
        pr.initialize_from_trained_model_folder(os.path.join(results, f"{trainer}__{PLANS}__{CONFIG}"), (FOLD,))
        pr.set_prompts(parse_prompts({c: given[what](c) for c in cases}), f"<{what}>")
        pr.check_prompts_for_images(images)
        pr.predict_from_files(images, out, save_probabilities=False, overwrite=True, num_processes_preprocessing=1,
                              num_processes_segmentation_export=1)
        per_case = {c: dice(sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, c + ".nii.gz"))) == 1, refs[c])
                    for c in cases}
        summary["arms"].append({"trainer": trainer, "given": what, "mean_dice": float(np.mean(list(per_case.values()))),
                                "per_case": per_case})
    summary["total_minutes"] = (time.time() - t_start) / 60
    with open(os.path.join(work, "text_and_prompts.json"), "w") as f:
        json.dump(summary, f, indent=2)

    iters = os.environ.get("NNUNET_PROMPT_DEMO_ITERS", "60")
    device = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    lines = [f"### One model for text and clicks (TextAndPromptTrainer), {datetime.date.today().isoformat()}, {device}",
             "", f"`python benchmarks/text_and_prompts.py --workdir {a.workdir} --epochs {a.epochs}`: {a.num_training} "
             f"training / {a.num_test} held-out phantoms (48x48x24, two look-alike lesions, the text's side says which is "
             f"the tumour), plans `{PLANS}`, fold {FOLD}, demo schedule ({a.epochs} x {iters} iterations, AdamW), text model "
             f"MiniLM-L6; the click is the tumour's most interior voxel",
             "", "| model | given at prediction | held-out tumour Dice |", "|---|---|---|"]
    lines += [f"| {r['trainer']} | {r['given']} | {r['mean_dice']:.3f} |" for r in summary["arms"]]
    lines += ["", f"* training minutes: {', '.join(f'{k} {v:.1f}' for k, v in minutes.items()) or 'reused'}; whole run "
                  f"{summary['total_minutes']:.1f} min"]
    report(lines, a.out)


if __name__ == "__main__":
    sys.exit(main())

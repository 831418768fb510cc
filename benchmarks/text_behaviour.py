"""Behaviour check of TextPromptTrainer on generated data where the clinical text decides the target.

    python benchmarks/text_behaviour.py --workdir /tmp/text_bench --out benchmarks/RESULTS.md

Data: the synthetic head-and-neck phantom with ``nodal_involvement=0.5``: two look-alike lesions (the
text's laterality says which is the tumour, label 1) and a lymph node on each side (in N1 cases the one on
the tumour's side is label 2). The image alone cannot tell either.

Steps: nnU-Net plans (NarrowUNetPlanner) and preprocesses; `nnUNetv2_train` trains nnUNetTrainer_demo
and TextPromptTrainer_demo (same plans, fold, schedule); the held-out cases are predicted by the
baseline, and by the text model three times: with the case's own text, with left/right swapped, and
with N0/N1 swapped (the perturbations of `nnunet-prompt text-analysis`, which reports the same comparison per
case for any text model and test set). Reported:
  * held-out Dice (tumour, node, mean) of both against the references;
  * swap share: among cases where both predictions hold a tumour, the share whose tumour (most of its voxels,
    on the patient's side of the image centre: ``nnunet_prompt.evaluation.text_analysis``) moves to the other
    side when left/right is swapped;
  * nodal effect: for N0 cases, the share where the N1 text adds node voxels (label 2) on the tumour's
    side, and the mean node volume with N0 vs N1 text (and the reverse for N1 cases).
Writes <workdir>/text_behaviour.json and appends a markdown section to --out.
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

DATASET_ID, NAME, CONFIG, PLANS, FOLD = 994, "TextHN", "3d_fullres", "nnUNetPlansNarrow", 0
BASELINE, TEXT = "nnUNetTrainer_demo", "TextPromptTrainer_demo"


def side_of(mask: np.ndarray, img) -> str | None:
    """The patient's side (of the image centre) that holds most of a (z, y, x) mask: 'left', 'right' or None."""
    from nnunet_prompt.evaluation.text_analysis import left_share
    share = left_share(mask, img)
    return None if np.isnan(share) else "left" if share > 0.5 else "right"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="text_bench")
    p.add_argument("--num-training", type=int, default=20)
    p.add_argument("--num-test", type=int, default=12)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=10, help="epochs of 60 iterations for both trainers (demo schedule)")
    p.add_argument("--out", default=None, help="append the markdown result to this file")
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
                                        shape_xyz=(48, 48, 24), spacing_xyz=(2.5, 2.5, 3.0), nodal_involvement=0.5)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    if not os.path.isfile(os.path.join(pre, PLANS + ".json")):
        extract_fingerprint_dataset(DATASET_ID, num_processes=2, check_dataset_integrity=True, show_progress_bar=False)
        plan_experiment_dataset(DATASET_ID, NarrowUNetPlanner)
        preprocess_dataset(DATASET_ID, PLANS, (CONFIG,), [2], show_progress_bar=False)

    results = os.path.join(os.environ["nnUNet_results"], os.path.basename(raw))
    minutes = {}
    for trainer in (BASELINE, TEXT):
        folder = os.path.join(results, f"{trainer}__{PLANS}__{CONFIG}", f"fold_{FOLD}", "checkpoint_final.pth")
        if not os.path.isfile(folder):
            t = time.time()
            _run([_bin("nnUNetv2_train"), str(DATASET_ID), CONFIG, str(FOLD), "-tr", trainer, "-p", PLANS,
                  "-device", a.device], os.path.join(work, f"train_{trainer}.log"), env)
            minutes[trainer] = (time.time() - t) / 60

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunet_prompt.clinical_text import read_sidecar
    from nnunet_prompt.evaluation.text_analysis import dice, predict_entries
    from nnunet_prompt.inference.predictor import PromptPredictor
    from nnunet_prompt.text.perturbation import swap_laterality, swap_n_stage
    texts = read_sidecar(raw)
    images = os.path.join(raw, "imagesTs")
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(images))
    dev = torch.device(a.device)
    preds = {}

    def predict(trainer, tag, entries=None):
        out = os.path.join(work, "predictions", f"{trainer}_{tag}")
        cls = PromptPredictor if entries is not None else nnUNetPredictor
        pr = cls(tile_step_size=0.5, use_mirroring=True, device=dev, allow_tqdm=False, verbose=False)
        pr.initialize_from_trained_model_folder(os.path.join(results, f"{trainer}__{PLANS}__{CONFIG}"), (FOLD,))
        if entries is not None:  # as `nnunet-prompt text-analysis` predicts
            predict_entries(pr, images, entries, tag, out)
        else:
            pr.predict_from_files(images, out, save_probabilities=False, overwrite=True, num_processes_preprocessing=1,
                                  num_processes_segmentation_export=1)
        preds[(trainer, tag)] = {c: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, c + ".nii.gz")))
                                 for c in cases}

    predict(BASELINE, "image_only")
    for tag, change in (("own_text", lambda t: t), ("side_swapped", swap_laterality), ("n_swapped", swap_n_stage)):
        predict(TEXT, tag, {c: {"text": change(texts[c]["text"])} for c in cases})

    refs = {c: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "labelsTs", c + ".nii.gz"))) for c in cases}
    imgs = {c: sitk.ReadImage(os.path.join(images, c + "_0000.nii.gz")) for c in cases}

    def dice_table(key):
        d = {c: {"tumour": dice(preds[key][c] == 1, refs[c] == 1),
                 "node": dice(preds[key][c] == 2, refs[c] == 2)} for c in cases}
        tumour = float(np.nanmean([v["tumour"] for v in d.values()]))
        node_cases = [v["node"] for c, v in d.items() if (refs[c] == 2).any()]
        # N0 cases: a node prediction is a false positive (Dice 0), no prediction is right (Dice 1)
        node_n0 = [0.0 if (preds[key][c] == 2).any() else 1.0 for c in cases if not (refs[c] == 2).any()]
        return {"tumour_dice": tumour, "node_dice_N1_cases": float(np.mean(node_cases)) if node_cases else None,
                "N0_cases_without_false_node": float(np.mean(node_n0)) if node_n0 else None, "per_case": d}

    summary = {"baseline": dice_table((BASELINE, "image_only")), "text": dice_table((TEXT, "own_text"))}
    moved, considered = 0, 0
    for c in cases:
        s1, s2 = side_of(preds[(TEXT, "own_text")][c] == 1, imgs[c]), side_of(preds[(TEXT, "side_swapped")][c] == 1, imgs[c])
        if s1 and s2:
            considered += 1
            moved += s1 != s2
    summary["side_swap"] = {"moved": moved, "cases_with_tumour_in_both": considered, "share": moved / max(considered, 1)}
    added, n0_cases, vols = 0, 0, {"N0_text": [], "N1_text": []}
    for c in cases:
        own, swapped = preds[(TEXT, "own_text")][c], preds[(TEXT, "n_swapped")][c]
        is_n1 = "N1" in texts[c]["text"]
        n0_pred, n1_pred = (swapped, own) if is_n1 else (own, swapped)
        vols["N0_text"].append(int((n0_pred == 2).sum()))
        vols["N1_text"].append(int((n1_pred == 2).sum()))
        if not is_n1:
            n0_cases += 1
            added += int((n1_pred == 2).sum()) > int((n0_pred == 2).sum())
    summary["nodal"] = {"N0_cases_where_N1_text_adds_node": added, "N0_cases": n0_cases,
                        "mean_node_voxels_N0_text": float(np.mean(vols["N0_text"])),
                        "mean_node_voxels_N1_text": float(np.mean(vols["N1_text"]))}
    summary["train_minutes"] = minutes
    summary["total_minutes"] = (time.time() - t_start) / 60
    with open(os.path.join(work, "text_behaviour.json"), "w") as f:
        json.dump(summary, f, indent=2)

    b, t, sw, nd = summary["baseline"], summary["text"], summary["side_swap"], summary["nodal"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    lines = [f"### TextPromptTrainer behaviour check, {datetime.date.today().isoformat()}, "
             f"{torch.cuda.get_device_name() if dev.type == 'cuda' else f'CPU ({os.cpu_count()} cores, {platform.machine()})'}",
             "", f"`python benchmarks/text_behaviour.py --workdir {a.workdir} --epochs {a.epochs}`: {a.num_training} training / "
             f"{a.num_test} held-out phantoms, text decides laterality and nodal target, plans `{PLANS}`, "
             f"demo schedule ({a.epochs} x 60 iterations, AdamW), default text model MiniLM-L6",
             "", "| model | tumour Dice | node Dice (N1 cases) | N0 cases without a false node |", "|---|---|---|---|",
             f"| nnUNetTrainer_demo (image only) | {fmt(b['tumour_dice'])} | {fmt(b['node_dice_N1_cases'])} | "
             f"{fmt(b['N0_cases_without_false_node'])} |",
             f"| TextPromptTrainer_demo (case's own text) | {fmt(t['tumour_dice'])} | {fmt(t['node_dice_N1_cases'])} | "
             f"{fmt(t['N0_cases_without_false_node'])} |",
             "", f"* left/right swapped in the text: the predicted tumour moved to the other side in {sw['moved']} of "
             f"{sw['cases_with_tumour_in_both']} cases ({100 * sw['share']:.0f}%)",
             f"* N0 -> N1 in the text of N0 cases: node voxels added in {nd['N0_cases_where_N1_text_adds_node']} of "
             f"{nd['N0_cases']}; mean predicted node volume {nd['mean_node_voxels_N0_text']:.0f} voxels with N0 text vs "
             f"{nd['mean_node_voxels_N1_text']:.0f} with N1 text (all cases)",
             f"* training minutes: {', '.join(f'{k} {v:.1f}' for k, v in minutes.items()) or 'reused'}; whole run "
             f"{summary['total_minutes']:.1f} min"]
    report(lines, a.out)


if __name__ == "__main__":
    sys.exit(main())

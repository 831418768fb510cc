"""Does the text model still know left from right when a patch covers less than half the body?

    python benchmarks/text_laterality.py --workdir /tmp/text_laterality --out benchmarks/RESULTS.md

Data: the synthetic head-and-neck phantom (two look-alike lesions, one per side; the clinical note's side
says which is the tumour), wide volumes (96 x 48 x 24 voxels at 2.5 x 2.5 x 3 mm) and clinical notes in ten
wordings (``--wording varied``: "SCC of the left tonsil, stage cT2N0M0.", "Primary: right tonsil. TNM: ...").
Plans: ``NarrowSmallPatchPlanner``, whose patch is about a third of the image along each axis (less than half the body's width), so the sliding
window covers the neck with several patches, as on a CT.

Trained with `nnUNetv2_train` on the same plans and fold, demo schedule: nnUNetTrainer_demo (image only),
TextPromptTrainer_demo (position channels: where a patch lies in the whole image; text-steered position maps with
the laterality contrast) and, with ``--ablation``, TextPromptTrainer_patchPosition_demo (position in the patch only:
the positional information removed), TextPromptTrainer_noPositionMaps_demo (the fusions only, LLMSeg's layout) and
TextPromptTrainer_noLateralityContrast_demo (maps that read the context alone). Or name the text models with
``--trainers``. Each held-out case is predicted with its own text and with left/right swapped (`nnunet-prompt
text-analysis`'s prediction).
Reported per model: held-out tumour Dice; the share of cases whose predicted tumour lies mainly on the side
the text names; the swap share for each direction (own text left -> swapped right, and right -> left).
Writes <workdir>/text_laterality.json and appends a markdown section to --out.
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

CONFIG, FOLD = "3d_fullres", 0
BASELINE, TEXT = "nnUNetTrainer_demo", "TextPromptTrainer_demo"
ABLATIONS = ("TextPromptTrainer_patchPosition_demo", "TextPromptTrainer_noPositionMaps_demo",
             "TextPromptTrainer_noLateralityContrast_demo")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="text_laterality")
    p.add_argument("--dataset-id", type=int, default=983)
    p.add_argument("--num-training", type=int, default=24)
    p.add_argument("--num-test", type=int, default=16)
    p.add_argument("--shape", type=int, nargs=3, default=(96, 48, 24), metavar=("X", "Y", "Z"))
    p.add_argument("--wording", default="varied", choices=("fixed", "varied"))
    p.add_argument("--planner", default="NarrowSmallPatchPlanner", choices=("NarrowSmallPatchPlanner", "NarrowUNetPlanner"))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=10, help="epochs of 60 iterations (demo schedule)")
    p.add_argument("--ablation", action="store_true", help=f"also train {', '.join(ABLATIONS)}")
    p.add_argument("--trainers", nargs="+", default=None, metavar="TRAINER",
                   help=f"the text models to train and measure (default: {TEXT}, with --ablation also the ablations)")
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
    import nnunet_prompt_planners.narrow_planner as planners
    planner = getattr(planners, a.planner)
    plans = {"NarrowSmallPatchPlanner": "nnUNetPlansNarrowSmallPatch", "NarrowUNetPlanner": "nnUNetPlansNarrow"}[a.planner]
    raw = generate_synthetic_hn_dataset(os.environ["nnUNet_raw"], a.dataset_id, "TextLaterality", a.num_training,
                                        a.num_test, shape_xyz=tuple(a.shape), spacing_xyz=(2.5, 2.5, 3.0),
                                        wording=a.wording)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    if not os.path.isfile(os.path.join(pre, plans + ".json")):
        extract_fingerprint_dataset(a.dataset_id, num_processes=2, check_dataset_integrity=True, show_progress_bar=False)
        plan_experiment_dataset(a.dataset_id, planner)
        preprocess_dataset(a.dataset_id, plans, (CONFIG,), [2], show_progress_bar=False)
    with open(os.path.join(pre, plans + ".json")) as f:
        patch = json.load(f)["configurations"][CONFIG]["patch_size"]

    results = os.path.join(os.environ["nnUNet_results"], os.path.basename(raw))
    text_models = a.trainers or [TEXT] + (list(ABLATIONS) if a.ablation else [])
    minutes = {}
    for trainer in [BASELINE] + text_models:
        final = os.path.join(results, f"{trainer}__{plans}__{CONFIG}", f"fold_{FOLD}", "checkpoint_final.pth")
        if not os.path.isfile(final):
            t = time.time()
            _run([_bin("nnUNetv2_train"), str(a.dataset_id), CONFIG, str(FOLD), "-tr", trainer, "-p", plans,
                  "-device", a.device], os.path.join(work, f"train_{trainer}.log"), env)
            minutes[trainer] = (time.time() - t) / 60

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunet_prompt.clinical_text import read_sidecar
    from nnunet_prompt.evaluation.text_analysis import dice, left_share, predict_entries
    from nnunet_prompt.inference.predictor import PromptPredictor
    from nnunet_prompt.text.perturbation import swap_laterality
    texts = read_sidecar(raw)
    images = os.path.join(raw, "imagesTs")
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(images))
    dev = torch.device(a.device)

    def predict(trainer, tag, entries=None):
        out = os.path.join(work, "predictions", f"{trainer}_{tag}")
        cls = PromptPredictor if entries is not None else nnUNetPredictor
        # no test-time mirroring for any model: the text models must not mirror (left would become right), and the
        # baseline is compared on the same footing
        pr = cls(tile_step_size=0.5, use_mirroring=False, device=dev, allow_tqdm=False, verbose=False)
        pr.initialize_from_trained_model_folder(os.path.join(results, f"{trainer}__{plans}__{CONFIG}"), (FOLD,))
        if entries is not None:  # as `nnunet-prompt text-analysis` predicts
            predict_entries(pr, images, entries, tag, out)
        else:
            pr.predict_from_files(images, out, save_probabilities=False, overwrite=True, num_processes_preprocessing=1,
                                  num_processes_segmentation_export=1)
        return {c: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, c + ".nii.gz"))) for c in cases}

    refs = {c: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw, "labelsTs", c + ".nii.gz"))) for c in cases}
    imgs = {c: sitk.ReadImage(os.path.join(images, c + "_0000.nii.gz")) for c in cases}
    named = {c: texts[c]["fields"]["laterality"] for c in cases}

    def side(mask, c):
        share = left_share(mask, imgs[c])
        return None if np.isnan(share) else "left" if share > 0.5 else "right"

    summary = {"patch_size": patch, "image_shape_xyz": list(a.shape), "wording": a.wording, "plans": plans,
               "models": {}}
    base = predict(BASELINE, "image_only")
    summary["models"][BASELINE] = {"tumour_dice": float(np.mean([dice(base[c] == 1, refs[c] == 1) for c in cases]))}
    for trainer in text_models:
        own = predict(trainer, "own_text", {c: {"text": texts[c]["text"]} for c in cases})
        swapped = predict(trainer, "side_swapped", {c: {"text": swap_laterality(texts[c]["text"])} for c in cases})
        row = {"tumour_dice": float(np.mean([dice(own[c] == 1, refs[c] == 1) for c in cases])),
               "on_named_side": int(sum(side(own[c] == 1, c) == named[c] for c in cases)), "cases": len(cases)}
        for direction, start in (("left_to_right", "left"), ("right_to_left", "right")):
            group = [c for c in cases if named[c] == start]
            moved = sum(side(own[c] == 1, c) == start and side(swapped[c] == 1, c) == ("right" if start == "left"
                                                                                          else "left") for c in group)
            row[direction] = {"moved": int(moved), "cases": len(group)}
        row["per_case"] = {c: {"text": texts[c]["text"], "named": named[c], "own_side": side(own[c] == 1, c),
                               "swapped_side": side(swapped[c] == 1, c), "dice": dice(own[c] == 1, refs[c] == 1)}
                           for c in cases}
        summary["models"][trainer] = row
    summary["train_minutes"] = minutes
    summary["total_minutes"] = (time.time() - t_start) / 60
    with open(os.path.join(work, "text_laterality.json"), "w") as f:
        json.dump(summary, f, indent=2)

    device = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    lines = [f"### Text laterality with patches narrower than half the body, {datetime.date.today().isoformat()}, {device}",
             "", f"`python benchmarks/text_laterality.py --workdir {a.workdir} --epochs {a.epochs}"
             f"{' --ablation' if a.ablation else ''} --wording {a.wording} --num-training {a.num_training}"
             f"{' --trainers ' + ' '.join(a.trainers) if a.trainers else ''}`: {a.num_training} training / "
             f"{a.num_test} held-out phantoms of "
             f"{a.shape[0]} x {a.shape[1]} x {a.shape[2]} voxels, {a.wording} wording, plans `{plans}` (patch "
             f"{' x '.join(map(str, patch))}, z y x), demo schedule ({a.epochs} x 60 iterations), text model MiniLM-L6",
             "", "| model | tumour Dice | tumour on the side the text names | swap left -> right | swap right -> left |",
             "|---|---|---|---|---|",
             f"| {BASELINE} (image only) | {summary['models'][BASELINE]['tumour_dice']:.3f} | | | |"]
    for trainer in text_models:
        r = summary["models"][trainer]
        lr, rl = r["left_to_right"], r["right_to_left"]
        lines.append(f"| {trainer} | {r['tumour_dice']:.3f} | {r['on_named_side']} / {r['cases']} | "
                     f"{lr['moved']} / {lr['cases']} | {rl['moved']} / {rl['cases']} |")
    lines += ["", f"* swap: cases whose predicted tumour lay on the named side and moved to the other side when the "
                  f"text's left/right were swapped, per side the case's own text names",
              f"* training minutes: {', '.join(f'{k} {v:.1f}' for k, v in minutes.items()) or 'reused'}; whole run "
              f"{summary['total_minutes']:.1f} min"]
    report(lines, a.out)


if __name__ == "__main__":
    sys.exit(main())

"""The MedSAM study's comparison on the head-and-neck phantom, one command per arm (issue 16).

The study (MedSAM vs nnU-Net for head-and-neck GTV) compares 2D MedSAM, zero-shot and fine-tuned, with 3D nnU-Net
without and with a per-slice box channel, on the same test cases and the same boxes. Here, on CPU:

1. generate the phantom (``nnunet_prompt_datasets.synthetic_hn``), plan it twice on the same fingerprint and split:
   ``NarrowUNetPlanner`` (3d_fullres) for nnU-Net and ``SAM2DPlanner64`` (2d, 64 px square patch) for MedSAM;
2. a *tiny random SAM* (``full_model.tiny_sam_config``, ~1e5 parameters) saved in the official file format stands
   in for ``medsam_vit_b.pth`` (nothing is downloaded). Its zero-shot arm only proves that the path runs: its
   numbers say nothing about MedSAM;
3. trainings with ``nnUNetv2_train`` (the demo schedule, ``--epochs`` x ``--iters``): ``nnUNetTrainer_demo`` and
   ``BoxPromptTrainer_demo`` (3d_fullres), ``MedSAMTrainer_demo`` (full fine-tuning) and
   ``MedSAMTrainer_frozenEncoder_demo`` (2d) from the tiny SAM file;
4. one boxes file for every prompted arm: ``nnunet-prompt boxes-from-labels --margin-mm-range 0 20`` on labelsTs;
5. ``nnunet-prompt predict`` for every prompted arm (``--zero-shot --sam-checkpoint`` for the zero-shot one),
   ``nnUNetv2_predict`` for the plain nnU-Net, then ``nnunet-prompt compare --predictions ...``: DSC, HD95 and the rest per case and label,
   paired against nnU-Net without box, with seconds per case / slice / box.

    python benchmarks/medsam_study.py --workdir /tmp/medsam_study --epochs 4 --iters 30 [--record benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import nnunet_workdir, report  # noqa: E402

DATASET_ID = 994
PLANS_3D, PLANS_2D = "nnUNetPlansNarrow", "nnUNetPlansSAM64"
ARMS = [  # name, trainer, plans, configuration, prompted
    ("nnunet", "nnUNetTrainer_demo", PLANS_3D, "3d_fullres", False),
    ("nnunet_box", "BoxPromptTrainer_demo", PLANS_3D, "3d_fullres", True),
    ("medsam_finetuned", "MedSAMTrainer_demo", PLANS_2D, "2d", True),
    ("medsam_frozen_encoder", "MedSAMTrainer_frozenEncoder_demo", PLANS_2D, "2d", True),
]


def _bin(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def _run(cmd, env, log=None) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log:
        with open(log, "w") as f:
            f.write(proc.stdout)
    if proc.returncode != 0:
        print(proc.stdout[-6000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t0


def prepare(num_training: int, num_test: int, shape_xyz) -> str:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    from nnunet_prompt_planners.narrow_planner import NarrowUNetPlanner
    from nnunet_prompt_planners.sam_planner import SAM2DPlanner64
    raw = generate_synthetic_hn_dataset(os.environ["nnUNet_raw"], DATASET_ID, "MedSAMStudy", num_training=num_training,
                                        num_test=num_test, shape_xyz=shape_xyz)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    if not os.path.isfile(os.path.join(pre, "dataset_fingerprint.json")):
        extract_fingerprint_dataset(DATASET_ID, num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
    for planner, plans, config in ((NarrowUNetPlanner, PLANS_3D, "3d_fullres"), (SAM2DPlanner64, PLANS_2D, "2d")):
        if not os.path.isfile(os.path.join(pre, f"{plans}.json")):
            plan_experiment_dataset(DATASET_ID, planner)
        plans_json = json.load(open(os.path.join(pre, f"{plans}.json")))
        if not os.path.isdir(os.path.join(pre, plans_json["configurations"][config]["data_identifier"])):
            preprocess_dataset(DATASET_ID, plans, (config,), [1], show_progress_bar=False)
    # one split for both plans (nnU-Net's splits_final.json is per dataset); one validation case: nnU-Net's final
    # validation of whole images is slow on a CPU, and the comparison is on imagesTs
    from nnunet_prompt.io_utils import atomic_write_json
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(raw, "imagesTr")))
    atomic_write_json([{"train": cases[:-1], "val": cases[-1:]}], os.path.join(pre, "splits_final.json"))
    return raw


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--num-training", type=int, default=12)
    p.add_argument("--num-test", type=int, default=6)
    p.add_argument("--shape", type=int, nargs=3, default=[64, 64, 24], help="phantom size x y z (voxels)")
    p.add_argument("--threads", default="2")
    p.add_argument("--record", default=None, help="append the result table to this Markdown file")
    a = p.parse_args(argv)

    work = nnunet_workdir(a.workdir)
    os.environ.setdefault("nnUNet_compile", "0")
    import torch
    from nnunet_prompt.nnunet_env import trainer_path
    from nnunet_prompt.sam.checkpoint import ENV_VAR
    from nnunet_prompt.sam.full_model import random_sam_model, save_sam_model_checkpoint, tiny_sam_config
    raw = prepare(a.num_training, a.num_test, a.shape)
    sam_file = os.path.join(work, "tiny_random_sam.pth")
    torch.manual_seed(0)
    save_sam_model_checkpoint(sam_file, random_sam_model(tiny_sam_config(64)))
    env = dict(os.environ, nnUNet_extTrainer=trainer_path(), nnUNet_n_proc_DA="0", OMP_NUM_THREADS=a.threads,
               NNUNET_PROMPT_DEMO_EPOCHS=str(a.epochs), NNUNET_PROMPT_DEMO_ITERS=str(a.iters), **{ENV_VAR: sam_file})

    minutes = {}
    for name, trainer, plans, config, _ in ARMS:
        done = os.path.join(os.environ["nnUNet_results"], os.path.basename(raw), f"{trainer}__{plans}__{config}",
                            "fold_0", "checkpoint_final.pth")
        if os.path.isfile(done):  # a rerun of the script in the same --workdir predicts again, without training
            minutes[name] = float("nan")
            continue
        minutes[name] = _run([_bin("nnUNetv2_train"), str(DATASET_ID), config, "0", "-tr", trainer, "-p", plans,
                              "-device", "cpu"], env, os.path.join(work, f"train_{name}.log")) / 60

    boxes = os.path.join(work, "boxes.json")
    _run([_bin("nnunet-prompt"), "boxes-from-labels", "-l", os.path.join(raw, "labelsTs"), "-d", str(DATASET_ID),
          "-p", PLANS_2D, "-o", boxes, "--margin-mm-range", "0", "20", "--seed", "0", "--overwrite"], env)
    images = os.path.join(raw, "imagesTs")
    folders = {}
    for name, trainer, plans, config, prompted in [("medsam_zero_shot", "MedSAMTrainer", PLANS_2D, "2d", True), *ARMS]:
        out = folders[name] = os.path.join(work, "predictions", name)
        # plain nnU-Net (no prompts, no record) predicts with nnU-Net's own command (its folder has no timing.json)
        command = ["nnunet-prompt", "predict"] if prompted else ["nnUNetv2_predict"]
        cmd = [_bin(command[0]), *command[1:], "-i", images, "-o", out, "-d", str(DATASET_ID), "-p", plans, "-c",
               config, "-tr", trainer, "-device", "cpu"]
        if name == "medsam_zero_shot":
            cmd += ["--zero-shot", "--sam-checkpoint", sam_file]
        else:
            cmd += ["-f", "0"]
        if prompted:
            cmd += ["--prompts", boxes]
        _run(cmd, env, os.path.join(work, f"predict_{name}.log"))

    out = os.path.join(work, "compare")
    _run([_bin("nnunet-prompt"), "compare", "-d", str(DATASET_ID), "-l", os.path.join(raw, "labelsTs"), "--baseline",
          "nnunet", "-o", out, "--predictions", *[f"{n}={f}" for n, f in folders.items()]], env)
    result = json.load(open(os.path.join(out, "compare.json")))
    names = [result["baseline"], *result["models"]]
    lines = [
        f"## The MedSAM study's arms on the head-and-neck phantom ({datetime.date.today()}, 2-core CPU, no GPU)", "",
        f"`benchmarks/medsam_study.py --epochs {a.epochs} --iters {a.iters} --num-training {a.num_training} "
        f"--num-test {a.num_test} --shape {' '.join(map(str, a.shape))}`: nnU-Net (NarrowUNetPlanner, 3d_fullres) "
        f"without and with the per-slice box channel, MedSAM (SAM2DPlanner64, 2d) fine-tuned (full / frozen "
        f"encoder) and zero-shot, all from a **tiny random SAM** (~1e5 parameters, not MedSAM weights: the zero-shot "
        f"row proves only that the path runs). Same split, same test cases, the same boxes file (one box per object "
        f"per slice, 0-20 mm margins, `boxes-from-labels --seed 0`). Demo schedule {a.epochs} x {a.iters} "
        f"iterations; training minutes: " + ", ".join(f"{n} {m:.1f}" for n, m in minutes.items()) + ".", "",
        "| arm | " + " | ".join(f"{t} DSC | {t} HD95 (mm)" for t in result["targets"]) + " | s per slice | s per box |",
        "|---|" + "---|---|" * len(result["targets"]) + "---|---|"]
    for n in names:
        cells = []
        for t, entry in result["targets"].items():
            for m in ("Dice", "HD95"):
                s = entry[n][m]
                cells.append("n/a" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}")
        timing = (result.get("timing") or {}).get(n) or {}
        cells += [f"{timing[k]:.4f}" if k in timing else "n/a" for k in ("seconds_per_slice", "seconds_per_box")]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired differences, CIs and tests: `{os.path.join(out, 'report.md')}` (not kept)."]
    report(lines, a.record)


if __name__ == "__main__":
    main()

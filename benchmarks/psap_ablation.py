"""Issue 5's ablation: PSAPTrainer (with the cross-patch prompt) vs PromptTrainer on a structure longer than a patch.

1. generate the two-tube neck phantom (``nnunet_prompt_datasets.synthetic_tubes``: the target tube runs over
   80-90 % of a 160 mm volume), fingerprint it, plan it with NarrowUNetPlanner, and override the planned
   patch size with a smaller one (default 32 x 48 x 48 voxels, z y x: about half the tube's length), then
   preprocess; fold 0 holds out a single training case (nnU-Net's final validation is slow on a CPU);
2. train PromptTrainer_demo and PSAPTrainer_CPP_demo with `nnUNetv2_train`, on the same plans and fold, with the
   same DemoSchedule (AdamW, NNUNET_PROMPT_DEMO_EPOCHS x NNUNET_PROMPT_DEMO_ITERS, at most 2 rounds per batch);
3. `nnunet-prompt interactive-eval --test-set --starts clicks --clicks 1 3 5` for both models, and for the PSAP
   model again with `--cross-patch`.

    python benchmarks/psap_ablation.py --workdir /tmp/psap_ablation --epochs 10 --iters 60 [--record benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import nnunet_workdir, report  # noqa: E402

DATASET_ID, CONFIG, PLANS, FOLD = 993, "3d_fullres", "nnUNetPlansNarrow", 0
PROMPT, PSAP = "PromptTrainer_demo", "PSAPTrainer_CPP_demo"


def _bin(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def _run(cmd, env) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-6000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    print(proc.stdout[-1500:], flush=True)
    return time.perf_counter() - t0


def override_patch_size(plans_file: str, patch_zyx) -> list:
    """Set the configuration's patch size, each axis rounded to a multiple of the network's total stride there."""
    from nnunet_prompt.io_utils import atomic_write_json
    plans = json.load(open(plans_file))
    cfg = plans["configurations"][CONFIG]
    stride = np.prod(np.asarray(cfg["architecture"]["arch_kwargs"]["strides"]), axis=0)
    patch = [int(max(s, (p // s) * s)) for p, s in zip(patch_zyx, stride)]
    cfg["patch_size"] = patch
    atomic_write_json(plans, plans_file)
    return patch


def prepare(work: str, patch_zyx, num_training: int, num_test: int) -> dict:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunet_prompt_datasets.synthetic_tubes import generate_synthetic_tube_dataset
    from nnunet_prompt_planners.narrow_planner import NarrowUNetPlanner
    raw = generate_synthetic_tube_dataset(os.environ["nnUNet_raw"], DATASET_ID, num_training=num_training,
                                          num_test=num_test)
    name = os.path.basename(raw)
    plans_file = os.path.join(os.environ["nnUNet_preprocessed"], name, f"{PLANS}.json")
    if not os.path.isfile(plans_file):
        extract_fingerprint_dataset(DATASET_ID, num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
        plan_experiment_dataset(DATASET_ID, NarrowUNetPlanner)
    patch = override_patch_size(plans_file, patch_zyx)
    if not os.path.isdir(os.path.join(os.environ["nnUNet_preprocessed"], name, "nnUNetPlans_3d_fullres")):
        preprocess_dataset(DATASET_ID, PLANS, (CONFIG,), [1], show_progress_bar=False)
    # fold 0 with a single validation case: nnU-Net's final validation (whole images, mirroring) costs minutes per
    # case on a CPU, and the comparison uses the held-out imagesTs through interactive-eval anyway
    from nnunet_prompt.io_utils import atomic_write_json
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(raw, "imagesTr")))
    atomic_write_json([{"train": cases[:-1], "val": cases[-1:]}],
                      os.path.join(os.environ["nnUNet_preprocessed"], name, "splits_final.json"))
    plans = json.load(open(plans_file))
    return {"name": name, "patch": patch, "image_zyx": plans["configurations"][CONFIG]["median_image_size_in_voxels"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--patch", type=int, nargs=3, default=[32, 48, 48], help="patch size z y x (voxels), each axis "
                   "rounded down to a multiple of the network's total stride there")
    p.add_argument("--num-training", type=int, default=16)
    p.add_argument("--num-test", type=int, default=6)
    p.add_argument("--threads", default="1", help="OMP_NUM_THREADS of each training (they run side by side)")
    p.add_argument("--record", default=None, help="append the result table to this Markdown file")
    a = p.parse_args(argv)

    work = nnunet_workdir(a.workdir)
    os.environ.setdefault("nnUNet_compile", "0")
    from nnunet_prompt.nnunet_env import trainer_path
    info = prepare(work, a.patch, a.num_training, a.num_test)
    env = dict(os.environ, nnUNet_extTrainer=trainer_path(), nnUNet_n_proc_DA="0", OMP_NUM_THREADS=a.threads,
               NNUNET_PROMPT_DEMO_EPOCHS=str(a.epochs), NNUNET_PROMPT_DEMO_ITERS=str(a.iters))

    # both trainings side by side (one thread each on a 2-core machine), then the evaluations
    procs, t0 = {}, time.perf_counter()
    for tr in (PROMPT, PSAP):
        cmd = [_bin("nnUNetv2_train"), str(DATASET_ID), CONFIG, str(FOLD), "-tr", tr, "-p", PLANS, "-device", "cpu"]
        print("$", " ".join(cmd), flush=True)
        log = open(os.path.join(work, f"train_{tr}.log"), "w")
        procs[tr] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log, time.perf_counter())
    minutes = {}
    for tr, (proc, log, start) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"training {tr} failed: see {log.name}")
        minutes[tr] = (time.perf_counter() - start) / 60
        log.close()

    eval_env = dict(env, OMP_NUM_THREADS="2")
    base = [_bin("nnunet-prompt"), "interactive-eval", "-d", str(DATASET_ID), "-c", CONFIG, "-f", str(FOLD), "-p", PLANS,
            "--test-set", "--starts", "clicks", "--clicks", "1", "3", "5", "-device", "cpu"]
    res = os.path.join(os.environ["nnUNet_results"], info["name"])
    out_plain, out_cpp = os.path.join(res, "ablation_eval"), os.path.join(res, "ablation_eval_cross_patch")
    eval_min = _run(base + ["-tr", PROMPT, PSAP, "-o", out_plain], eval_env) / 60
    eval_cpp_min = _run(base + ["-tr", PSAP, "--cross-patch", "-o", out_cpp], eval_env) / 60
    plain = json.load(open(os.path.join(out_plain, "interactive_eval.json")))["mean"]
    cpp = json.load(open(os.path.join(out_cpp, "interactive_eval.json")))["mean"]

    def row(name, summary):
        s = summary["clicks"]
        return f"| {name} | " + " | ".join(f"{s[str(n)]['Dice']:.3f}" if str(n) in s else f"{s[n]['Dice']:.3f}"
                                          for n in (1, 3, 5)) + " |"

    n_cases = plain[PROMPT]["clicks"]["1"]["targets"]
    lines = [
        f"## PSAPTrainer (with CPP) vs PromptTrainer on a tube longer than a patch ({datetime.date.today()}, "
        f"2-core CPU, no GPU)",
        "",
        f"`benchmarks/psap_ablation.py --epochs {a.epochs} --iters {a.iters} --patch {' '.join(map(str, a.patch))} "
        f"--num-training {a.num_training} --num-test {a.num_test}`: two-tube neck phantom "
        f"(`nnunet_prompt_datasets.synthetic_tubes`, image {info['image_zyx']} voxels z y x at 2 mm), "
        f"NarrowUNetPlanner plans with the patch overridden to {info['patch']} (the target tube is 64-72 slices long), "
        f"both trainers with the DemoSchedule ({a.epochs} x {a.iters} iterations, AdamW), trained side by side with "
        f"{a.threads} thread(s) each ({minutes[PROMPT]:.1f} min PromptTrainer_demo, {minutes[PSAP]:.1f} min "
        f"PSAPTrainer_CPP_demo). Dice on the {n_cases} held-out cases (imagesTs), first click random in the target "
        f"(seeded), then clicks at the largest error, through the interactive session "
        f"(`nnunet-prompt interactive-eval --test-set --starts clicks --clicks 1 3 5 [--cross-patch]`; "
        f"{eval_min:.1f} + {eval_cpp_min:.1f} min).",
        "",
        "| model | Dice, 1 click | 3 clicks | 5 clicks |",
        "|---|---|---|---|",
        row(f"{PROMPT} (prompts at the input)", plain[PROMPT]),
        row(f"{PSAP}, session without CPP (region growth, default)", plain[PSAP]),
        row(f"{PSAP}, session with `--cross-patch`", cpp[PSAP]),
    ]
    report(lines, a.record)
    json.dump({"plain": plain, "cross_patch": cpp, "train_minutes": minutes, "patch": info["patch"]},
              open(os.path.join(work, "psap_ablation.json"), "w"), indent=2)


if __name__ == "__main__":
    main()

"""Step time of PromptTrainer, PSAPTrainer and TextPromptTrainer next to nnUNetTrainer on the same plans and data.

    python benchmarks/trainer_step.py --device cuda --plans default --iters 200   # GPU check (issue: foundation)
    python benchmarks/trainer_step.py --device cpu --plans narrow --iters 20      # what CPU can show

Generates the synthetic phantom (bigger volumes on GPU so nnU-Net plans a larger patch), plans with
nnU-Net's ExperimentPlanner ("default") or NarrowUNetPlanner ("narrow"), preprocesses, then times
`train_step` of each trainer in this process with nnU-Net's own data loader feeding it (batch loading
is excluded from the timings). For PromptTrainer it reports separately:
  * forward-backward: the nnU-Net training step on image + prompt channels,
  * simulation: the simulated user (initial prompt, and clicks in refinement rounds),
  * refinement forward passes: the extra no-grad passes of rounds 2..r.
Rows: nnUNetTrainer; PromptTrainer with 1 round (prompt channels + simulation only); PromptTrainer with
its default policy (r uniform in 1..5); TextPromptTrainer with the default MiniLM-L6 text model, and with
a larger local model given by --text-model (its memory). Prints a markdown table and writes it with the date and device to
--out (default: stdout only).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys

from common import nnunet_workdir, report
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--plans", default="default", choices=["default", "narrow"])
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None, help="append the markdown result to this file")
    p.add_argument("--text-model", default=None, help="also time TextPromptTrainer with this local Hugging Face "
                   "model folder (e.g. a Llama-sized model, for memory)")
    a = p.parse_args(argv)

    work = nnunet_workdir(a.workdir)
    os.environ.setdefault("nnUNet_compile", "0")
    os.environ.setdefault("nnUNet_n_proc_DA", "8" if a.device == "cuda" else "1")
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
    ensure_trainer_path_registered()

    import torch
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_prompt.interaction.simulation import SimulationPolicy
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    from nnunet_prompt_planners.narrow_planner import NarrowUNetPlanner

    did = 995
    shape = (160, 160, 96) if a.device == "cuda" else (64, 64, 32)
    raw = generate_synthetic_hn_dataset(os.environ["nnUNet_raw"], did, "Bench", num_training=10, num_test=0,
                                        shape_xyz=shape, spacing_xyz=(1.0, 1.0, 1.0) if a.device == "cuda" else (2.0, 2.0, 3.0))
    planner, plans_name = (ExperimentPlanner, "nnUNetPlans") if a.plans == "default" else (NarrowUNetPlanner, "nnUNetPlansNarrow")
    extract_fingerprint_dataset(did, num_processes=4, show_progress_bar=False, verbose=False)
    plan_experiment_dataset(did, planner)
    preprocess_dataset(did, plans_name, ("3d_fullres",), [4], show_progress_bar=False)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    plans = json.load(open(os.path.join(pre, plans_name + ".json")))
    dataset_json = json.load(open(os.path.join(pre, "dataset.json")))
    cfg = plans["configurations"]["3d_fullres"]
    device = torch.device(a.device)
    prompt_cls = recursive_find_trainer_class_by_name("PromptTrainer")
    text_cls = recursive_find_trainer_class_by_name("TextPromptTrainer")
    psap_cls = recursive_find_trainer_class_by_name("PSAPTrainer")
    psap_cpp_cls = recursive_find_trainer_class_by_name("PSAPTrainer_CPP")

    def measure(cls, policy=None):
        tr = cls(dict(plans, continue_training=False), "3d_fullres", 0, dataset_json, device)
        if policy is not None:
            tr.simulation_policy = policy
        tr.initialize()
        tr.on_train_start()
        tr.network.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        steps, parts = [], {"simulation_s": [], "refinement_forward_s": [], "train_step_s": []}
        for i in range(a.warmup + a.iters):
            batch = next(tr.dataloader_train)
            if hasattr(tr, "reset_timing"):
                tr.reset_timing()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tr.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= a.warmup:
                steps.append(time.perf_counter() - t0)
                if hasattr(tr, "_timing"):
                    for k in parts:
                        parts[k].append(tr._timing.get(k, 0.0))
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
        tr.on_train_end()
        med = lambda v: 1000 * statistics.median(v) if v else float("nan")
        return {"step_ms": med(steps), "fwd_bwd_ms": med(parts["train_step_s"]) if parts["train_step_s"] else med(steps),
                "simulation_ms": med(parts["simulation_s"]), "refinement_ms": statistics.mean(parts["refinement_forward_s"]) * 1000
                if parts["refinement_forward_s"] else float("nan"), "peak_gib": peak}

    rows = [("nnUNetTrainer", measure(nnUNetTrainer)),
            ("PromptTrainer, 1 round", measure(prompt_cls, SimulationPolicy(num_rounds=1))),
            ("PromptTrainer, default (1-5 rounds)", measure(prompt_cls)),
            ("PSAPTrainer, 1 round", measure(psap_cls, SimulationPolicy(num_rounds=1, initial_types=("clicks",)))),
            ("PSAPTrainer_CPP, 1 round (+ cross-patch head and L_cross)",
             measure(psap_cpp_cls, SimulationPolicy(num_rounds=1, initial_types=("clicks",)))),
            ("TextPromptTrainer, MiniLM-L6 (default)", measure(text_cls))]
    if a.text_model:
        os.environ["NNUNET_PROMPT_TEXT_MODEL"] = a.text_model
        rows.append((f"TextPromptTrainer, {os.path.basename(os.path.normpath(a.text_model))}", measure(text_cls)))
    base = rows[0][1]["fwd_bwd_ms"]
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    lines = [f"### Trainer step time, {datetime.date.today().isoformat()}, {dev_name}",
             "", f"plans `{plans_name}`, patch {cfg['patch_size']}, batch {cfg['batch_size']}, features "
             f"{cfg['architecture']['arch_kwargs']['features_per_stage']}, torch {torch.__version__}, "
             f"{'bf16/fp16 autocast (nnU-Net default on CUDA)' if device.type == 'cuda' else 'fp32'}, median of {a.iters} steps after {a.warmup} warm-up",
             "", "| trainer | whole step ms | forward-backward ms | vs nnUNetTrainer fwd-bwd | simulation ms (median) | refinement forward passes ms (mean) | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['step_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | {r['fwd_bwd_ms'] / base:.2f}x | "
                     f"{r['simulation_ms']:.1f} | {r['refinement_ms']:.1f} | {r['peak_gib']:.2f} |")
    report(lines, a.out)


if __name__ == "__main__":
    sys.exit(main())

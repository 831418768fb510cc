"""Issue 8's GPU check: SAMAdapter3DTrainer and DistillTrainer next to nnUNetTrainer on the same plans and data.

    python benchmarks/sam_adapter3d_step.py --device cuda --sam /models/sam_vit_b_01ec64.pth --iters 50
    python benchmarks/sam_adapter3d_step.py --device cuda --iters 50           # ViT-B shape, random weights
    python benchmarks/sam_adapter3d_step.py --device cpu --vit tiny --iters 3  # smoke run on a CPU

Generates the synthetic phantom, plans with SAMAdapter3DPlanner (128³ patch; SAMAdapter3DPlanner_32 on CPU),
preprocesses, and times in this process, with nnU-Net's own data loader feeding each trainer (loading
excluded from the timings):
  * one `train_step` (median) and the peak GPU memory of nnUNetTrainer, SAMAdapter3DTrainer (+ its Table 3
    ablations with --ablations) and DistillTrainer / DistillTrainer_narrow (teacher forward included);
  * inference: one no-grad forward pass on a batch-1 patch (autocast on CUDA), teacher vs students.
Without --sam, a ViT-B-shaped encoder with random weights is written in the official format and used as the
SAM file: step time and memory do not depend on the weight values. The DistillTrainer's teacher is the
SAMAdapter3DTrainer as initialised (its checkpoint written into a fold folder); again only timings matter.
Prints a markdown table; --out appends it to a file (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

from common import nnunet_workdir, report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--sam", default=None, help="official SAM checkpoint (default: random ViT-B-shaped weights)")
    p.add_argument("--vit", default="vit_b", choices=["vit_b", "tiny"], help="shape of the generated encoder")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--ablations", action="store_true", help="also time the Table 3 ablation variants")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    work = nnunet_workdir(a.workdir)
    os.environ.setdefault("nnUNet_compile", "0")
    os.environ.setdefault("nnUNet_n_proc_DA", "8" if a.device == "cuda" else "1")  # 0 crashes planning
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
    ensure_trainer_path_registered()

    import torch
    from transformers import SamVisionConfig
    from transformers.models.sam.modeling_sam import SamVisionEncoder
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_prompt.sam.checkpoint import ENV_VAR, sam_vision_config, save_sam_checkpoint
    from nnunet_prompt.training.distillation import TEACHER_ENV_VAR
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    from nnunet_prompt_planners.sam_adapter3d_planner import SAMAdapter3DPlanner, SAMAdapter3DPlanner_32

    device = torch.device(a.device)
    sam = a.sam
    if sam is None:
        config = sam_vision_config("vit_b") if a.vit == "vit_b" else SamVisionConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=8, image_size=64, mlp_dim=64,
            output_channels=16, window_size=2, global_attn_indexes=[1, 3], initializer_range=0.02)
        sam = os.path.join(work, f"random_{a.vit}.pth")
        save_sam_checkpoint(sam, SamVisionEncoder(config))
    os.environ[ENV_VAR] = os.path.abspath(sam)

    did = 996
    gpu = a.device == "cuda"
    raw = generate_synthetic_hn_dataset(os.environ["nnUNet_raw"], did, "BenchSAM3D", num_training=6, num_test=0,
                                        shape_xyz=(160, 160, 144) if gpu else (48, 48, 40),
                                        spacing_xyz=(1.0, 1.0, 1.0) if gpu else (2.0, 2.0, 2.0))
    planner = SAMAdapter3DPlanner if gpu else SAMAdapter3DPlanner_32
    extract_fingerprint_dataset(did, num_processes=4, show_progress_bar=False, verbose=False)
    _, plans_name = plan_experiment_dataset(did, planner)
    preprocess_dataset(did, plans_name, ("3d_fullres",), [4], show_progress_bar=False)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    plans = json.load(open(os.path.join(pre, plans_name + ".json")))
    dataset_json = json.load(open(os.path.join(pre, "dataset.json")))
    cfg = plans["configurations"]["3d_fullres"]
    patch = cfg["patch_size"]

    def trainer(cls):
        return cls(dict(plans, continue_training=False), "3d_fullres", 0, dataset_json, device)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def measure(cls):
        tr = trainer(cls)
        tr.initialize()
        tr.on_train_start()
        tr.network.train()
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        steps = []
        for i in range(a.warmup + a.iters):
            batch = next(tr.dataloader_train)
            sync()
            t0 = time.perf_counter()
            tr.train_step(batch)
            sync()
            if i >= a.warmup:
                steps.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if gpu else float("nan")
        trainable = sum(p.numel() for p in tr.network.parameters() if p.requires_grad)
        total = sum(p.numel() for p in tr.network.parameters())
        tr.on_train_end()
        return tr, {"step_ms": 1000 * statistics.median(steps), "peak_gib": peak, "trainable_m": trainable / 1e6,
                    "total_m": total / 1e6}

    @torch.no_grad()
    def inference_ms(network):
        network.eval()
        x = torch.randn(1, len(dataset_json["channel_names"]), *patch, device=device)
        times = []
        for i in range(a.warmup + a.iters):
            sync()
            t0 = time.perf_counter()
            with torch.autocast(device.type, enabled=gpu):
                network(x)
            sync()
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    rows = []
    _, r = measure(nnUNetTrainer)
    rows.append(("nnUNetTrainer", r))
    names = ["SAMAdapter3DTrainer"] + (["SAMAdapter3DTrainer_noAPG", "SAMAdapter3DTrainer_noMLA",
                                        "SAMAdapter3DTrainer_noAPG_noMLA"] if a.ablations else [])
    teacher_tr = None
    for name in names:
        tr, r = measure(recursive_find_trainer_class_by_name(name))
        rows.append((name, r))
        teacher_tr = teacher_tr or tr
    # the teacher fold: the SAMAdapter3DTrainer's plans.json (written by on_train_start) and a checkpoint
    fold = os.path.join(teacher_tr.output_folder_base, "fold_0")
    os.makedirs(fold, exist_ok=True)
    teacher_tr.save_checkpoint(os.path.join(fold, "checkpoint_final.pth"))
    os.environ[TEACHER_ENV_VAR] = fold
    infer = {"SAMAdapter3DTrainer (teacher)": inference_ms(teacher_tr.network)}
    for name in ("DistillTrainer", "DistillTrainer_narrow"):
        tr, r = measure(recursive_find_trainer_class_by_name(name))
        rows.append((f"{name} (teacher forward included)", r))
        infer[f"{name} student"] = inference_ms(tr.network)

    dev = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    base = rows[0][1]["step_ms"]
    lines = [f"### SAMAdapter3DTrainer / DistillTrainer step time, {datetime.date.today().isoformat()}, {dev}", "",
             f"plans `{plans_name}`, patch {patch}, batch {cfg['batch_size']}, SAM file "
             f"{'`' + os.path.basename(a.sam) + '`' if a.sam else f'random {a.vit}-shaped'}, torch {torch.__version__}, "
             f"{'autocast (nnU-Net default on CUDA)' if gpu else 'fp32'}, median of {a.iters} steps after "
             f"{a.warmup} warm-up", "",
             "| trainer | train step ms | vs nnUNetTrainer | peak GiB | trainable / total params (M) |",
             "|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['step_ms']:.1f} | {r['step_ms'] / base:.2f}x | {r['peak_gib']:.2f} | "
                     f"{r['trainable_m']:.2f} / {r['total_m']:.2f} |")
    lines += ["", "| inference, one patch, batch 1 | forward ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in infer.items()]
    report(lines, a.out)


if __name__ == "__main__":
    sys.exit(main())

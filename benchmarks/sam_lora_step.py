"""SAMLoRATrainer step time, memory and trainable parameters next to nnU-Net's own 2D U-Net on the same plans
and data (issue 7, item 7).

    python benchmarks/sam_lora_step.py --device cuda --size 512 --iters 300 --out benchmarks/RESULTS.md  # GPU
    python benchmarks/sam_lora_step.py --device cpu --size 64 --variant tiny --iters 3                    # smoke

Generates the synthetic phantom, plans it with SAM2DPlanner (a square 2d patch of --size pixels, nnU-Net's own
U-Net planned for that patch), preprocesses 2d, then times nnU-Net's ``train_step`` in this process with
nnU-Net's data loader feeding it (batch loading excluded) for: nnUNetTrainer (2D U-Net), SAMLoRATrainer
(k classes, no prompts), SAMLoRATrainer_box (MedSAM-style boxes) and SAMLoRATrainer_GaRPA_ProViCMA (prompts).
No weights can be downloaded, so the SAM encoder is randomly initialised, written as an official-format
checkpoint file and loaded through the real loading code: --variant vit_b (default), vit_l, vit_h, or tiny
(a 2-block 32-wide encoder for CPU smoke runs). Step time depends on the size only, not on the weights' values.
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
    p.add_argument("--size", type=int, default=512, choices=[64, 512, 1024])
    p.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None, help="append the markdown result to this file")
    a = p.parse_args(argv)

    work = nnunet_workdir(a.workdir)
    os.environ.setdefault("nnUNet_compile", "0")
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
    ensure_trainer_path_registered()

    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_prompt.sam.checkpoint import ENV_VAR, random_sam_image_encoder, sam_vision_config, save_sam_checkpoint
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    import nnunet_prompt_planners.sam_planner as planners

    if a.variant == "tiny":
        config = sam_vision_config("vit_b", 1024, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   global_attn_indexes=[1], window_size=2, output_channels=32, mlp_dim=64)
    else:
        config = sam_vision_config(a.variant, 1024)
    sam_path = os.path.join(work, f"sam_{a.variant}_random.pth")
    save_sam_checkpoint(sam_path, random_sam_image_encoder(config))
    os.environ[ENV_VAR] = sam_path

    did = 989
    planner = {64: planners.SAM2DPlanner64, 512: planners.SAM2DPlanner, 1024: planners.SAM2DPlanner1024}[a.size]
    shape = (a.size, a.size, 24) if a.device == "cuda" else (a.size, a.size, 8)
    raw = generate_synthetic_hn_dataset(os.environ["nnUNet_raw"], did, "SAMBench", num_training=8, num_test=0,
                                        shape_xyz=shape, spacing_xyz=(1.0, 1.0, 3.0))
    extract_fingerprint_dataset(did, num_processes=2, show_progress_bar=False, verbose=False)
    _, plans_name = plan_experiment_dataset(did, planner)
    preprocess_dataset(did, plans_name, ("2d",), [2], show_progress_bar=False)
    # after planning: nnU-Net's planner crashes with 0 data-augmentation workers
    os.environ.setdefault("nnUNet_n_proc_DA", "8" if a.device == "cuda" else "0")
    pre = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    plans = json.load(open(os.path.join(pre, plans_name + ".json")))
    dataset_json = json.load(open(os.path.join(pre, "dataset.json")))
    cfg = plans["configurations"]["2d"]
    device = torch.device(a.device)

    def measure(cls):
        tr = cls(dict(plans, continue_training=False), "2d", 0, dataset_json, device)
        tr.initialize()
        tr.on_train_start()
        tr.network.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        steps = []
        for i in range(a.warmup + a.iters):
            batch = next(tr.dataloader_train)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tr.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= a.warmup:
                steps.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
        n_train = sum(p.numel() for p in tr.network.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in tr.network.parameters())
        tr.on_train_end()
        return {"step_ms": 1000 * statistics.median(steps), "peak_gib": peak, "trainable": n_train, "total": n_all,
                "batch": tr.configuration_manager.batch_size}

    rows = [("nnUNetTrainer (2D U-Net)", measure(nnUNetTrainer))]
    for name in ("SAMLoRATrainer", "SAMLoRATrainer_box", "SAMLoRATrainer_GaRPA_ProViCMA"):
        rows.append((name, measure(recursive_find_trainer_class_by_name(name))))
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    lines = [f"### SAM LoRA step time, {datetime.date.today().isoformat()}, {dev_name}", "",
             f"plans `{plans_name}`, 2d patch {cfg['patch_size']}, batch {cfg['batch_size']}, SAM encoder {a.variant} "
             f"(random weights, loaded from a saved official-format file), torch {torch.__version__}, "
             f"{'autocast (nnU-Net default on CUDA)' if device.type == 'cuda' else 'fp32'}, median of {a.iters} "
             f"steps after {a.warmup} warm-up", "",
             "| trainer | step ms | peak GiB | trainable parameters | all parameters |", "|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['step_ms']:.1f} | {r['peak_gib']:.2f} | {r['trainable']:,} | {r['total']:,} |")
    report(lines, a.out)


if __name__ == "__main__":
    sys.exit(main())

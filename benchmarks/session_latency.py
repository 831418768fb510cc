"""Per-click latency of the interactive session for a given region (patch) size.

    python benchmarks/session_latency.py --device cuda --patch 128 192 --clicks 30    # targets: 60 / 160 ms on H100
    python benchmarks/session_latency.py --device cpu --patch 64 --clicks 10 --size 128

Latency does not depend on the weights, so no training is needed: nnU-Net plans a synthetic isotropic
1 mm phantom with its default ExperimentPlanner, the patch size is set to each requested size (same
U-Net topology), and a PromptTrainer network with random weights is saved as a regular model folder
(plans.json with the model record, dataset.json, fold_0/checkpoint_final.pth), which the session loads
through its normal code path. One click = network on the region + growth check + paste, without
mirroring (the session's default), after warm-up clicks; the reply's mask is not copied out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys

from common import nnunet_workdir, report


def make_model_folder(work: str, patch, shape_xyz, spacing_xyz=(1.0, 1.0, 1.0), dataset_id: int = 996,
                      planner=None, plans_name: str = "nnUNetPlans"):
    """A random-weight PromptTrainer model folder planned by nnU-Net on phantoms of ``shape_xyz`` at
    ``spacing_xyz``; ``patch`` (z, y, x), an int for a cube, or None for the planner's own patch size.
    ``planner``: an nnU-Net planner class writing ``plans_name`` (default nnU-Net's ExperimentPlanner).
    Returns (model folder, a test image path, the configuration manager)."""
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, plan_experiment_dataset
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_prompt.io_utils import atomic_write_json
    from nnunet_prompt.model_record import ModelRecord, put_record
    from nnunet_prompt.nnunet_env import trainer_path  # noqa: F401  (our trainers must be importable)
    from nnunet_prompt.training.prompt_trainer import PromptTrainerBase
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset

    did = dataset_id
    raw = generate_synthetic_hn_dataset(os.environ["nnUNet_raw"], did, "Latency", num_training=2, num_test=1,
                                        shape_xyz=tuple(shape_xyz), spacing_xyz=tuple(spacing_xyz))
    pre = os.path.join(os.environ["nnUNet_preprocessed"], os.path.basename(raw))
    if not os.path.isfile(os.path.join(pre, plans_name + ".json")):
        if not os.path.isfile(os.path.join(pre, "dataset_fingerprint.json")):
            extract_fingerprint_dataset(did, num_processes=2, show_progress_bar=False, verbose=False)
        plan_experiment_dataset(did, *([planner] if planner is not None else []))
    plans = json.load(open(os.path.join(pre, plans_name + ".json")))
    if patch is not None:
        plans["configurations"]["3d_fullres"]["patch_size"] = [patch] * 3 if isinstance(patch, int) else list(patch)
    dataset_json = json.load(open(os.path.join(raw, "dataset.json")))
    # the record a PromptTrainer would write (the network is rebuilt from the plans alone)
    put_record(plans, ModelRecord(trainer="PromptTrainer", prompt_encoding=PromptTrainerBase.prompt_encoding.to_dict(),
                                  network=PromptTrainerBase.network_options()))
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    net = PromptTrainerBase.build_network_architecture(pm, cm, 1, 2, enable_deep_supervision=False)
    folder = os.path.join(work, "model_patch" + "x".join(map(str, cm.patch_size)))
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(os.path.join(folder, "fold_0"))
    atomic_write_json(plans, os.path.join(folder, "plans.json"))
    atomic_write_json(dataset_json, os.path.join(folder, "dataset.json"))
    torch.save({"network_weights": net.state_dict(), "trainer_name": "PromptTrainer",
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset_json},
                "inference_allowed_mirroring_axes": (0, 1, 2)}, os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    return folder, os.path.join(raw, "imagesTs", sorted(os.listdir(os.path.join(raw, "imagesTs")))[0]), cm


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--patch", type=int, nargs="+", default=[128, 192])
    p.add_argument("--size", type=int, default=256, help="phantom edge length in voxels (1 mm)")
    p.add_argument("--clicks", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None, help="append the markdown result to this file")
    a = p.parse_args(argv)

    work = nnunet_workdir()
    import numpy as np
    import torch
    from nnunet_prompt.inference.session import InteractiveSession

    rows = []
    for patch in a.patch:
        folder, image, cm = make_model_folder(work, patch, (a.size,) * 3)
        s = InteractiveSession(folder, fold=0, device=a.device, max_growth=0)
        s.set_image(image)
        rng = np.random.default_rng(0)
        times = []
        for i in range(a.warmup + a.clicks):
            x, y, z = (int(v) for v in rng.integers(patch // 2, a.size - patch // 2, 3))
            s.add_point((x, y, z), return_mask=False)
            if i >= a.warmup:
                times.append(s.last_latency_ms)
        rows.append((patch, statistics.median(times), min(times), max(times), cm.network_arch_init_kwargs["features_per_stage"]))
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    lines = [f"### Session latency per click, {datetime.date.today().isoformat()}, {dev}", "",
             f"`python benchmarks/session_latency.py --device {a.device} --patch {' '.join(map(str, a.patch))} "
             f"--size {a.size} --clicks {a.clicks}`; torch {torch.__version__}, no mirroring, random weights, "
             f"median of {a.clicks} clicks after {a.warmup} warm-up", "",
             "| region (patch) | median ms | min ms | max ms | U-Net features |", "|---|---|---|---|---|"]
    lines += [f"| {p}^3 | {m:.1f} | {lo:.1f} | {hi:.1f} | {f} |" for p, m, lo, hi, f in rows]
    report(lines, a.out)


if __name__ == "__main__":
    sys.exit(main())

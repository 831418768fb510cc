"""The N-click protocol (CT-SAM3D): Dice and NSD after N interactions, measured through the interactive
session, so it measures what a user gets.

For every held-out case and every target label in its reference:
* ``clicks`` start: the first click is a random voxel of the target (seeded per case and label);
* ``box`` start: the first interaction is the target's bounding box;
* then each further click goes to the voxel farthest from the boundary of the largest current error
  region (positive in a miss, negative in a false positive: the same rule as the training simulation,
  ``InteractionSimulator.next_clicks``), and the session feeds its previous result back as mask prompt.
Metrics are recorded after each requested number of interactions N.
"""
from __future__ import annotations

import csv
import os
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from nnunet_prompt.evaluation.metrics import binary_metrics
from nnunet_prompt.interaction.simulation import InteractionSimulator
from nnunet_prompt.io_utils import atomic_path, atomic_write_json
from nnunet_prompt.prompts.encoding import PromptEncoding

STARTS = ("clicks", "box")


def held_out_cases(dataset_name: str, plans: str, fold: int, use_test_set: bool):
    """(case, image files, label file) of the fold's validation cases, or of imagesTs/labelsTs."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder
    raw = os.path.join(os.environ["nnUNet_raw"], dataset_name)
    dj = load_json(os.path.join(raw, "dataset.json"))
    ending = dj["file_ending"]
    if use_test_set:
        images, labels = os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs")
        cases = sorted(f[:-len(ending)] for f in os.listdir(labels) if f.endswith(ending))
    else:
        splits = load_json(os.path.join(os.environ["nnUNet_preprocessed"], dataset_name, "splits_final.json"))
        cases = sorted(splits[fold]["val"])
        images, labels = os.path.join(raw, "imagesTr"), os.path.join(raw, "labelsTr")
    files = {os.path.basename(f[0])[:-len(ending) - 5]: f for f in create_lists_from_splitted_dataset_folder(images, ending)}
    missing = [c for c in cases if c not in files]
    if missing:
        raise FileNotFoundError(f"Images of held-out case(s) {missing} are missing in '{images}'.")
    return [(c, files[c], os.path.join(labels, c + ending)) for c in cases], dj


def run_protocol(session, label_map: np.ndarray, label: int, start: str, clicks: Sequence[int], spacing_zyx,
                 nsd_tolerance_mm: float, seed: int) -> List[dict]:
    """One target through one protocol; returns a row per requested N."""
    target = label_map == label
    rng = np.random.default_rng(seed)
    simulator = InteractionSimulator(PromptEncoding(), spacing_zyx, seed=seed)
    session.reset()
    rows = []
    for n in range(1, max(clicks) + 1):
        if n == 1 and start == "box":
            zz, yy, xx = np.nonzero(target)
            mask = session.add_box((xx.min(), yy.min(), zz.min()), (xx.max(), yy.max(), zz.max()))
        elif n == 1:
            z, y, x = np.argwhere(target)[rng.integers(int(target.sum()))]
            mask = session.add_point((x, y, z), positive=True)
        else:
            coords, kind = simulator.next_clicks(torch.from_numpy(mask > 0)[None], torch.from_numpy(target)[None])
            if int(kind[0]) < 0:  # nothing left to correct: the result stays as it is
                pass
            else:
                z, y, x = coords[0].tolist()
                mask = session.add_point((x, y, z), positive=bool(kind[0] == 1))
        if n in clicks:
            m = binary_metrics(mask > 0, target, spacing_zyx, nsd_tolerance_mm)
            rows.append({"n": n, "Dice": m["Dice"], "NSD": m["NSD"], "latency_ms": session.last_latency_ms})
    return rows


def interactive_eval(dataset_name: str, configuration: str, fold: int, trainers: Sequence[str], plans: str,
                     clicks: Sequence[int], output_folder: str, device: str = "cpu", nsd_tolerance_mm: float = 2.0,
                     seed: int = 0, use_test_set: bool = False, starts: Sequence[str] = STARTS,
                     session_kwargs: Optional[dict] = None) -> dict:
    """``session_kwargs`` go to every InteractiveSession (e.g. ``{"cross_patch": True}``)."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunet_prompt.inference.session import InteractiveSession
    from nnunet_prompt.prompts.model import foreground_labels
    import SimpleITK as sitk

    cases, dj = held_out_cases(dataset_name, plans, fold, use_test_set)
    labels = foreground_labels(dj)
    rows: List[dict] = []
    for trainer in trainers:
        session = InteractiveSession(get_output_folder(dataset_name, trainer, plans, configuration), fold=fold,
                                     device=device, **(session_kwargs or {}))
        for case, images, label_file in tqdm(cases, desc=f"{trainer}: N-click protocol"):
            ref_img = sitk.ReadImage(label_file)
            label_map = sitk.GetArrayFromImage(ref_img)
            spacing_zyx = ref_img.GetSpacing()[::-1]
            session.set_image(list(images))
            for name, value in labels.items():
                if not (label_map == value).any():
                    continue
                for start in starts:
                    case_seed = seed * 100003 + zlib.crc32(f"{case}:{value}".encode()) % 100003
                    for r in run_protocol(session, label_map, value, start, clicks, spacing_zyx, nsd_tolerance_mm,
                                          case_seed):
                        rows.append({"trainer": trainer, "case": case, "label": name, "start": start, **r})
    summary = summarise(rows)
    os.makedirs(output_folder, exist_ok=True)
    with atomic_path(os.path.join(output_folder, "interactive_eval.csv")) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["trainer", "case", "label", "start", "n", "Dice", "NSD", "latency_ms"])
            w.writeheader()
            w.writerows(rows)
    atomic_write_json({"clicks": list(clicks), "nsd_tolerance_mm": nsd_tolerance_mm, "seed": seed,
                       "session": {k: v for k, v in (session_kwargs or {}).items()},
                       "cases": [c for c, _, _ in cases], "mean": summary}, os.path.join(output_folder, "interactive_eval.json"))
    plot_curves(summary, os.path.join(output_folder, "interactive_eval.png"))
    return summary


def summarise(rows: List[dict]) -> Dict[str, Dict[str, Dict[int, Dict[str, float]]]]:
    """trainer -> start -> N -> mean Dice / NSD over targets."""
    out: Dict = {}
    for r in rows:
        out.setdefault(r["trainer"], {}).setdefault(r["start"], {}).setdefault(r["n"], []).append(r)
    return {t: {s: {n: {"Dice": float(np.nanmean([r["Dice"] for r in v])), "NSD": float(np.nanmean([r["NSD"] for r in v])),
                        "targets": len(v)} for n, v in sorted(by_n.items())} for s, by_n in by_start.items()}
            for t, by_start in out.items()}


def plot_curves(summary: dict, png: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for trainer, by_start in summary.items():
        for start, by_n in by_start.items():
            ns = sorted(by_n)
            for ax, metric in zip(axes, ("Dice", "NSD")):
                ax.plot(ns, [by_n[n][metric] for n in ns], marker="o", linestyle="-" if start == "clicks" else "--",
                        label=f"{trainer} ({start} start)")
    for ax, metric in zip(axes, ("Dice", "NSD")):
        ax.set_xlabel("interactions (clicks; a box counts as one)")
        ax.set_ylabel(f"mean {metric}")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)

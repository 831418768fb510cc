"""`nnunet-prompt compare`: prompt trainers against a plain nnU-Net baseline on the same cases.

The cases are the cross-validation predictions nnU-Net's final validation wrote (``fold_X/validation``;
for prompt trainers they were made with simulated prompts), so every model is judged on the same
held-out cases of the same split. Metrics come from ``evaluation.metrics``; each trainer is compared
with the baseline case by case with a two-sided paired Wilcoxon signed-rank test (scipy), as SAM-RT
does. Models trained on different plans, splits or label sets are refused.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from glob import glob
from typing import Dict, List, Sequence

import numpy as np

from nnunet_prompt.evaluation.evaluate_folder import EvaluationError, evaluate_folders
from nnunet_prompt.evaluation.metrics import METRICS
from nnunet_prompt.io_utils import atomic_path, atomic_write_json

LOWER_IS_BETTER = {"HD95", "ASSD"}


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _check_same_setup(folders: Dict[str, str], configuration: str, folds: Sequence[int]) -> None:
    base_name, base = next(iter(folders.items()))
    ref_plans = _load(os.path.join(base, "plans.json"))
    ref_labels = _load(os.path.join(base, "dataset.json"))["labels"]
    for name, folder in folders.items():
        plans = _load(os.path.join(folder, "plans.json"))
        a, b = plans["configurations"][configuration], ref_plans["configurations"][configuration]
        differing = [k for k in ("patch_size", "spacing", "data_identifier", "normalization_schemes")
                     if a.get(k) != b.get(k)] + (["transpose_forward"] if plans["transpose_forward"] != ref_plans["transpose_forward"] else [])
        if differing:
            raise EvaluationError(f"'{name}' was trained on other plans than '{base_name}' (differs in {differing}): "
                                  f"train both on the same plans (-p) for a fair comparison.")
        if _load(os.path.join(folder, "dataset.json"))["labels"] != ref_labels:
            raise EvaluationError(f"'{name}' and '{base_name}' have different label sets; compare models of one dataset.")
        for f in folds:
            cases = lambda fo: sorted(c for c in os.listdir(os.path.join(fo, f"fold_{f}", "validation"))
                                      if not c.endswith(".json"))
            for fo in (folder, base):
                if not os.path.isdir(os.path.join(fo, f"fold_{f}", "validation")):
                    raise EvaluationError(f"'{fo}' has no fold_{f}/validation: train (or run --val for) fold {f} first.")
                if not cases(fo):
                    raise EvaluationError(f"'{fo}/fold_{f}/validation' holds no validation predictions: its final "
                                          f"validation did not run or was removed. Run nnUNetv2_train ... {f} --val "
                                          f"for it.")
            if cases(folder) != cases(base):
                raise EvaluationError(f"'{name}' and '{base_name}' validated fold {f} on different cases: they were "
                                      f"trained on different splits.")


def compare(dataset_name: str, configuration: str, baseline: str, trainers: Sequence[str], plans: str,
            folds: Sequence[int], output_folder: str, nsd_tolerance_mm: float = 2.0) -> dict:
    from scipy.stats import wilcoxon
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    folders = {t: get_output_folder(dataset_name, t, plans, configuration) for t in [baseline, *trainers]}
    for t, f in folders.items():
        if not os.path.isdir(f):
            raise EvaluationError(f"No trained model for '{t}' at '{f}'.")
    _check_same_setup(folders, configuration, folds)
    gt = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name, "gt_segmentations")
    dataset_json = _load(os.path.join(folders[baseline], "dataset.json"))

    per_case: Dict[str, Dict[str, Dict[str, Dict[str, float]]]] = {}  # trainer -> target -> case -> metrics
    for t, folder in folders.items():
        for f in folds:
            val = os.path.join(folder, f"fold_{f}", "validation")
            cases = {c for c in os.listdir(val) if c.endswith(dataset_json["file_ending"])}
            with tempfile.TemporaryDirectory() as tmp:  # the reference cases of this fold, as links
                for c in cases:
                    os.symlink(os.path.join(gt, c), os.path.join(tmp, c))
                res = evaluate_folders(tmp, val, dataset_json, nsd_tolerance_mm)
            for c in res["metric_per_case"]:
                for target, m in c["metrics"].items():
                    per_case.setdefault(t, {}).setdefault(target, {})[f"fold{f}/{c['case']}"] = m

    report: Dict = {"baseline": baseline, "trainers": list(trainers), "folds": list(folds),
                    "nsd_tolerance_mm": nsd_tolerance_mm, "targets": {}}
    for target in per_case[baseline]:
        entry = {}
        cases = sorted(per_case[baseline][target])
        for t in folders:
            stats = {}
            for m in METRICS:
                v = np.array([per_case[t][target][c][m] for c in cases], float)
                ok = ~np.isnan(v)
                stats[m] = {"mean": float(np.mean(v[ok])) if ok.any() else None,
                            "std": float(np.std(v[ok])) if ok.any() else None,
                            "median": float(np.median(v[ok])) if ok.any() else None, "n": int(ok.sum())}
                if t != baseline:
                    b = np.array([per_case[baseline][target][c][m] for c in cases], float)
                    both = ok & ~np.isnan(b)
                    diff = v[both] - b[both]
                    stats[m]["wilcoxon_p"] = (float(wilcoxon(v[both], b[both]).pvalue)
                                              if both.sum() >= 2 and np.any(diff != 0) else None)
            entry[t] = stats
        report["targets"][target] = entry
    os.makedirs(output_folder, exist_ok=True)
    # the clicks curve of `nnunet-prompt interactive-eval`, if it was run with its default output folder
    for png in sorted(glob(os.path.join(os.environ["nnUNet_results"], dataset_name,
                                        f"interactive_eval_{configuration}_fold*", "interactive_eval.png")))[:1]:
        shutil.copyfile(png, os.path.join(output_folder, "interactive_eval.png"))
    atomic_write_json(report, os.path.join(output_folder, "compare.json"))
    _box_plots(per_case, folders, os.path.join(output_folder, "compare_boxplots.png"))
    _markdown(report, output_folder)
    return report


def _box_plots(per_case, folders, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    targets = list(next(iter(per_case.values())))
    fig, axes = plt.subplots(len(targets), 3, figsize=(13, 3.6 * len(targets)), squeeze=False)
    for row, target in enumerate(targets):
        for ax, m in zip(axes[row], ("Dice", "HD95", "NSD")):
            data = [[v[m] for v in per_case[t][target].values() if not np.isnan(v[m])] for t in folders]
            ax.boxplot(data)
            ax.set_xticks(range(1, len(folders) + 1), list(folders), rotation=15, fontsize=8)
            ax.set_title(f"{target}: {m}{' (mm)' if m in LOWER_IS_BETTER else ''}")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _markdown(report: dict, folder: str) -> None:
    lines = [f"# {', '.join(report['trainers'])} vs {report['baseline']}", "",
             f"Folds {report['folds']}, nnU-Net's validation predictions (prompt trainers: simulated prompts). "
             f"Paired two-sided Wilcoxon signed-rank test against {report['baseline']}. NSD tolerance "
             f"{report['nsd_tolerance_mm']} mm. HD95/ASSD in mm, lower is better.", ""]
    for target, entry in report["targets"].items():
        lines += [f"## {target}", "", "| trainer | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        for t, stats in entry.items():
            cells = []
            for m in METRICS:
                s = stats[m]
                if s["mean"] is None:
                    cells.append("n/a")
                    continue
                cell = f"{s['mean']:.3f} ± {s['std']:.3f} (median {s['median']:.3f})"
                if "wilcoxon_p" in s:
                    cell += f", p={s['wilcoxon_p']:.3g}" if s["wilcoxon_p"] is not None else ", p=n/a"
                cells.append(cell)
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["![box plots](compare_boxplots.png)", ""]
    ncl = os.path.join(folder, "interactive_eval.png")
    if os.path.isfile(ncl):
        lines += ["![Dice after N clicks](interactive_eval.png)", ""]
    with atomic_path(os.path.join(folder, "report.md")) as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join(lines))

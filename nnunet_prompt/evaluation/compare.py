"""`nnunet-prompt compare`: models against a baseline on the same cases, per case and per label.

Two sources of cases:

* **cross-validation** (``compare -d D --baseline nnUNetTrainer --trainers PromptTrainer``): the predictions nnU-Net's
  final validation wrote (``fold_X/validation``; prompt trainers predicted them with simulated prompts), pooled over
  the given folds, so every model is judged on the same held-out cases of the same split;
* **test predictions** (``compare -d D -l labelsTs --predictions nnunet=OUT1 medsam=OUT2 ... --baseline nnunet``):
  folders written by ``nnunet-prompt predict`` / ``nnUNetv2_predict`` on one test set (e.g. every arm of the MedSAM
  study, given the same boxes file).

A model is ``TRAINER`` (trained on ``-p`` / ``-c``) or nnU-Net's folder name ``TRAINER__PLANS__CONFIGURATION``, so a 2D
model can be compared with a 3D one (the MedSAM study's 2D MedSAM vs 3D nnU-Net). Predictions are compared in the
images' own geometry, so plans and configurations may differ on purpose; what is refused is what makes a pairing
meaningless: other label sets, other cases (other splits), and two models named for the same plans and configuration
whose plans differ (one was re-planned: not the same data). Every arm's plans, configuration, patch and spacing are
listed in the report.

Statistics per label and metric, on the cases both models have a value for: mean, std, median; against the baseline
the mean paired difference with a percentile-bootstrap 95 % confidence interval (scipy.stats.bootstrap, 10,000
resamples, seeded), the paired t-test and the two-sided Wilcoxon signed-rank test (SAM-RT's test). Where a prediction
folder holds ``timing.json`` (written by ``nnunet-prompt predict``), seconds per case and per slice are reported.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from glob import glob
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_prompt.evaluation.evaluate_folder import EvaluationError, evaluate_folders
from nnunet_prompt.evaluation.metrics import METRICS
from nnunet_prompt.io_utils import atomic_path, atomic_write_json

LOWER_IS_BETTER = {"HD95", "ASSD"}
TIMING_FILE = "timing.json"
BOOTSTRAP_RESAMPLES = 10000


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


@dataclass(frozen=True)
class TrainedModel:
    name: str            # as the user named it
    trainer: str
    plans: str
    configuration: str
    folder: str

    @classmethod
    def from_spec(cls, spec: str, dataset_name: str, plans: str, configuration: str) -> "TrainedModel":
        """'TRAINER' (on the default plans and configuration) or nnU-Net's folder name 'TRAINER__PLANS__CONFIG'."""
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        parts = spec.split("__")
        if len(parts) == 1:
            trainer = spec
        elif len(parts) == 3 and all(parts):
            trainer, plans, configuration = parts
        else:
            raise EvaluationError(f"model '{spec}': give a trainer name or nnU-Net's model folder name "
                                  f"TRAINER__PLANS__CONFIGURATION (e.g. MedSAMTrainer__nnUNetPlansSAM512__2d).")
        folder = get_output_folder(dataset_name, trainer, plans, configuration)
        if not os.path.isdir(folder):
            raise EvaluationError(f"No trained model for '{spec}' at '{folder}'.")
        return cls(spec, trainer, plans, configuration, folder)


def _validation_cases(folder: str, fold: int) -> List[str]:
    val = os.path.join(folder, f"fold_{fold}", "validation")
    if not os.path.isdir(val):
        raise EvaluationError(f"'{folder}' has no fold_{fold}/validation: train (or run --val for) fold {fold} first.")
    cases = sorted(c for c in os.listdir(val) if not c.endswith(".json") and not c.endswith(".npz")
                   and not c.endswith(".pkl"))
    if not cases:
        raise EvaluationError(f"'{val}' holds no validation predictions: its final validation did not run or was "
                              f"removed. Run nnUNetv2_train ... {fold} --val for it.")
    return cases


def _plans_setup(model: TrainedModel) -> dict:
    plans = _load(os.path.join(model.folder, "plans.json"))
    c = plans["configurations"][model.configuration]
    return {"plans": model.plans, "configuration": model.configuration, "patch_size": c.get("patch_size"),
            "spacing": c.get("spacing"), "data_identifier": c.get("data_identifier"),
            "normalization_schemes": c.get("normalization_schemes"), "transpose_forward": plans["transpose_forward"]}


def check_same_setup(models: Sequence[TrainedModel], folds: Sequence[int]) -> Dict[str, dict]:
    """Refuse pairings that mean nothing (see module doc); returns each model's setup for the report."""
    base = models[0]
    setups = {m.name: _plans_setup(m) for m in models}
    ref_labels = _load(os.path.join(base.folder, "dataset.json"))["labels"]
    for m in models[1:]:
        if (m.plans, m.configuration) == (base.plans, base.configuration):
            differing = [k for k in ("patch_size", "spacing", "data_identifier", "normalization_schemes",
                                     "transpose_forward") if setups[m.name][k] != setups[base.name][k]]
            if differing:
                raise EvaluationError(
                    f"'{m.name}' was trained on other plans than '{base.name}' although both name plans '{m.plans}', "
                    f"configuration '{m.configuration}' (differs in {differing}): train both on the same plans (-p) "
                    f"for a fair comparison.")
        if _load(os.path.join(m.folder, "dataset.json"))["labels"] != ref_labels:
            raise EvaluationError(f"'{m.name}' and '{base.name}' have different label sets; compare models of one "
                                  f"dataset.")
        for f in folds:
            if _validation_cases(m.folder, f) != _validation_cases(base.folder, f):
                raise EvaluationError(f"'{m.name}' and '{base.name}' validated fold {f} on different cases: they "
                                      f"were trained on different splits.")
    return setups


def _evaluate_cases(reference_folder: str, prediction_folder: str, cases: Sequence[str], dataset_json: dict,
                    nsd_tolerance_mm: float, prefix: str, into: Dict[str, Dict[str, dict]]) -> None:
    """Metrics of the given cases (file names) into {target: {prefix + case: metrics}}."""
    with tempfile.TemporaryDirectory() as tmp:  # the reference cases, as links
        for c in cases:
            os.symlink(os.path.abspath(os.path.join(reference_folder, c)), os.path.join(tmp, c))
        res = evaluate_folders(tmp, prediction_folder, dataset_json, nsd_tolerance_mm)
    for c in res["metric_per_case"]:
        for target, m in c["metrics"].items():
            into.setdefault(target, {})[prefix + c["case"]] = m


def read_timing(folder: str) -> Optional[dict]:
    path = os.path.join(folder, TIMING_FILE)
    if not os.path.isfile(path):
        return None
    try:
        return _load(path)["cases"]
    except (ValueError, KeyError) as e:
        raise EvaluationError(f"'{path}' is not a timing file of nnunet-prompt predict ({e}).") from None


def _paired(v: np.ndarray, b: np.ndarray, seed: int) -> dict:
    from scipy.stats import bootstrap, ttest_rel, wilcoxon
    both = ~np.isnan(v) & ~np.isnan(b)
    diff = v[both] - b[both]
    out = {"n_paired": int(both.sum()), "mean_difference": float(diff.mean()) if diff.size else None,
           "difference_ci95": None, "ttest_p": None, "wilcoxon_p": None}
    if diff.size >= 2 and np.any(diff != 0):
        out["wilcoxon_p"] = float(wilcoxon(v[both], b[both]).pvalue)
        out["ttest_p"] = float(ttest_rel(v[both], b[both]).pvalue)
        ci = bootstrap((diff,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=0.95,
                       method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
        out["difference_ci95"] = [float(ci.low), float(ci.high)]
    return out


def _statistics(per_case: Dict[str, Dict[str, Dict[str, dict]]], baseline: str, seed: int = 0) -> Dict[str, dict]:
    """per_case: model -> target -> case -> metrics. Returns target -> model -> metric -> statistics."""
    targets: Dict[str, dict] = {}
    for target in per_case[baseline]:
        cases = sorted(per_case[baseline][target])
        entry = {}
        for name in per_case:
            stats = {}
            for m in METRICS:
                v = np.array([per_case[name][target][c][m] for c in cases], float)
                ok = ~np.isnan(v)
                stats[m] = {"mean": float(np.mean(v[ok])) if ok.any() else None,
                            "std": float(np.std(v[ok])) if ok.any() else None,
                            "median": float(np.median(v[ok])) if ok.any() else None, "n": int(ok.sum())}
                if name != baseline:
                    b = np.array([per_case[baseline][target][c][m] for c in cases], float)
                    stats[m].update(_paired(v, b, seed))
            entry[name] = stats
        targets[target] = entry
    return targets


def _timing_summary(timing: Optional[dict], cases: Sequence[str]) -> Optional[dict]:
    if not timing:
        return None
    rows = [timing[c] for c in cases if c in timing]
    if not rows:
        return None
    per_case = np.array([r["seconds"] for r in rows], float)
    # 2d models record seconds_per_slice (one slice of one prompted label's pass); else the whole pass per slice
    per_slice = np.array([r.get("seconds_per_slice", r["seconds"] / max(int(r["slices"]), 1)) for r in rows], float)
    out = {"n": len(rows), "seconds_per_case": float(per_case.mean()), "seconds_per_slice": float(per_slice.mean())}
    with_boxes = [r for r in rows if r.get("boxes")]
    if with_boxes:
        out["seconds_per_box"] = float(np.mean([r["seconds"] / r["boxes"] for r in with_boxes]))
    return out


def _write_report(report: dict, per_case, output_folder: str, title_source: str) -> None:
    os.makedirs(output_folder, exist_ok=True)
    atomic_write_json(report, os.path.join(output_folder, "compare.json"))
    _box_plots(per_case, os.path.join(output_folder, "compare_boxplots.png"))
    _markdown(report, output_folder, title_source)


def compare(dataset_name: str, configuration: str, baseline: str, trainers: Sequence[str], plans: str,
            folds: Sequence[int], output_folder: str, nsd_tolerance_mm: float = 2.0) -> dict:
    """Cross-validation predictions of trained models (see module doc)."""
    models = [TrainedModel.from_spec(s, dataset_name, plans, configuration) for s in [baseline, *trainers]]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise EvaluationError(f"a model is named twice in {names}")
    setups = check_same_setup(models, folds)
    gt = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name, "gt_segmentations")
    dataset_json = _load(os.path.join(models[0].folder, "dataset.json"))

    per_case: Dict[str, Dict[str, Dict[str, dict]]] = {}
    for m in models:
        for f in folds:
            val = os.path.join(m.folder, f"fold_{f}", "validation")
            cases = [c for c in _validation_cases(m.folder, f) if c.endswith(dataset_json["file_ending"])]
            _evaluate_cases(gt, val, cases, dataset_json, nsd_tolerance_mm, f"fold{f}/", per_case.setdefault(m.name, {}))
    report = {"source": "cross-validation", "baseline": baseline, "models": names[1:], "folds": list(folds),
              "setup": setups, "nsd_tolerance_mm": nsd_tolerance_mm, "targets": _statistics(per_case, baseline)}
    os.makedirs(output_folder, exist_ok=True)
    # the clicks curve of `nnunet-prompt interactive-eval`, if it was run with its default output folder
    for png in sorted(glob(os.path.join(os.environ["nnUNet_results"], dataset_name,
                                        f"interactive_eval_{configuration}_fold*", "interactive_eval.png")))[:1]:
        shutil.copyfile(png, os.path.join(output_folder, "interactive_eval.png"))
    _write_report(report, per_case, output_folder,
                  f"folds {list(folds)}, nnU-Net's validation predictions (prompt trainers: simulated prompts)")
    return report


def compare_predictions(predictions: Dict[str, str], labels_folder: str, dataset_json: dict, baseline: str,
                        output_folder: str, nsd_tolerance_mm: float = 2.0) -> dict:
    """Prediction folders of one test set (name -> folder), against the reference labels (see module doc)."""
    if baseline not in predictions:
        raise EvaluationError(f"--baseline '{baseline}' is not one of the named predictions {sorted(predictions)}.")
    ending = dataset_json["file_ending"]
    cases_of = {}
    for name, folder in predictions.items():
        if not os.path.isdir(folder):
            raise EvaluationError(f"Prediction folder '{folder}' ({name}) does not exist.")
        cases_of[name] = sorted(f for f in os.listdir(folder) if f.endswith(ending))
        if not cases_of[name]:
            raise EvaluationError(f"Prediction folder '{folder}' ({name}) holds no '{ending}' files.")
    cases = cases_of[baseline]
    for name, own in cases_of.items():
        if own != cases:
            missing, extra = sorted(set(cases) - set(own)), sorted(set(own) - set(cases))
            raise EvaluationError(f"'{name}' ({predictions[name]}) and the baseline '{baseline}' predicted different "
                                  f"cases (missing {missing[:5]}, extra {extra[:5]}): predict the same test cases "
                                  f"with every model.")
    missing_ref = [c for c in cases if not os.path.isfile(os.path.join(labels_folder, c))]
    if missing_ref:
        raise EvaluationError(f"The reference folder '{labels_folder}' has no label file for {missing_ref[:5]}.")
    per_case: Dict[str, Dict[str, Dict[str, dict]]] = {}
    timing = {}
    for name, folder in predictions.items():
        _evaluate_cases(labels_folder, folder, cases, dataset_json, nsd_tolerance_mm, "", per_case.setdefault(name, {}))
        timing[name] = _timing_summary(read_timing(folder), [c[:-len(ending)] for c in cases])
    report = {"source": "test predictions", "baseline": baseline, "models": [n for n in predictions if n != baseline],
              "predictions": {n: os.path.abspath(f) for n, f in predictions.items()}, "labels": labels_folder,
              "nsd_tolerance_mm": nsd_tolerance_mm, "timing": timing, "targets": _statistics(per_case, baseline)}
    _write_report(report, {n: per_case[n] for n in [baseline, *report["models"]]}, output_folder,
                  f"{len(cases)} test cases, references '{labels_folder}'")
    return report


def _box_plots(per_case, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(per_case)
    targets = list(per_case[names[0]])
    fig, axes = plt.subplots(len(targets), 3, figsize=(13, 3.6 * len(targets)), squeeze=False)
    for row, target in enumerate(targets):
        for ax, m in zip(axes[row], ("Dice", "HD95", "NSD")):
            data = [[v[m] for v in per_case[t][target].values() if not np.isnan(v[m])] for t in names]
            ax.boxplot(data)
            ax.set_xticks(range(1, len(names) + 1), names, rotation=15, fontsize=8)
            ax.set_title(f"{target}: {m}{' (mm)' if m in LOWER_IS_BETTER else ''}")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _cell(s: dict) -> str:
    if s["mean"] is None:
        return "n/a"
    cell = f"{s['mean']:.3f} ± {s['std']:.3f} (median {s['median']:.3f})"
    if "n_paired" in s:
        if s["difference_ci95"] is not None:
            lo, hi = s["difference_ci95"]
            cell += (f"; Δ {s['mean_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], t-test p={s['ttest_p']:.3g}, "
                     f"Wilcoxon p={s['wilcoxon_p']:.3g}")
        else:
            cell += "; Δ n/a (fewer than 2 differing pairs)"
    return cell


def _markdown(report: dict, folder: str, source: str) -> None:
    names = [report["baseline"], *report["models"]]
    lines = [f"# {', '.join(report['models'])} vs {report['baseline']}", "",
             f"{source[0].upper()}{source[1:]}. Δ: mean paired difference to {report['baseline']} with its bootstrap "
             f"95 % CI; paired t-test and two-sided Wilcoxon signed-rank test. NSD tolerance "
             f"{report['nsd_tolerance_mm']} mm. HD95/ASSD in mm, lower is better.", ""]
    if report.get("setup"):
        lines += ["| model | plans | configuration | patch | spacing |", "|---|---|---|---|---|"]
        for n in names:
            s = report["setup"][n]
            lines.append(f"| {n} | {s['plans']} | {s['configuration']} | {s['patch_size']} | {s['spacing']} |")
        lines.append("")
    if report.get("timing"):
        lines += ["| model | s per case | s per slice | s per box |", "|---|---|---|---|"]
        for n in names:
            t = report["timing"].get(n)
            lines.append(f"| {n} | " + (" | ".join(f"{t[k]:.3f}" if k in t else "n/a" for k in
                                                    ("seconds_per_case", "seconds_per_slice", "seconds_per_box"))
                                        if t else "n/a | n/a | n/a (no timing.json)") + " |")
        lines.append("")
    for target, entry in report["targets"].items():
        lines += [f"## {target}", "", "| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        for t, stats in entry.items():
            lines.append(f"| {t} | " + " | ".join(_cell(stats[m]) for m in METRICS) + " |")
        lines.append("")
    lines += ["![box plots](compare_boxplots.png)", ""]
    if os.path.isfile(os.path.join(folder, "interactive_eval.png")):
        lines += ["![Dice after N clicks](interactive_eval.png)", ""]
    with atomic_path(os.path.join(folder, "report.md")) as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join(lines))

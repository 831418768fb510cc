"""Interactive evaluation protocols, measured through the interactive session, so they measure what a user gets.

For every case and every target label in its reference:

* ``nclick`` (CT-SAM3D's N-click protocol, the default): the first interaction is a random voxel of the target
  (``clicks`` start, seeded per case and label) or the target's bounding box (``box`` start); Dice and NSD are
  recorded after each requested number of interactions N;
* ``cvpr25`` (the CVPR 2025 foundation-model challenge): the target's bounding box, then 5 clicks; Dice and NSD
  after each of the 6 steps, the area under the Dice- and NSD-vs-step curves (``auc``) and the final values.

Every further click goes to the point of the largest current error region farthest from its border, in mm
(``nnunet_prompt.interaction.user_prompts.next_click_mm``): positive in a miss, negative in a false positive; the
session feeds its previous result back as mask prompt.

Cases come from a fold's validation cases, or from any labelled folder pair (``labelled_folder_cases``: imagesTs /
labelsTs or the user's own, nnU-Net naming), whose label values a ``label_map`` may translate to the model's.
Means are reported per label (over the cases that hold it) and pooled (over all targets, a target being one label
of one case: the per-label means weighted by their numbers of targets).
"""
from __future__ import annotations

import csv
import os
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_prompt.evaluation.evaluate_folder import EvaluationError, _read_label_map, grid_problems
from nnunet_prompt.interaction.user_prompts import next_click_mm
from nnunet_prompt.io_utils import atomic_path, atomic_write_json, read_json, remove_new_outputs_on_failure

STARTS = ("clicks", "box")
PROTOCOLS = ("nclick", "cvpr25")
CVPR25_STEPS = ("box", "+1 click", "+2 clicks", "+3 clicks", "+4 clicks", "+5 clicks")
POOLED = "pooled"
AUC_DEFINITION = ("AUC = sum over the S-1 intervals of consecutive steps of (m_i + m_(i+1)) / 2, divided by S-1 "
                  "(S = 6 steps: box, +1 ... +5 clicks; the trapezoid rule with the steps 1 apart, normalised to "
                  "[0, 1]); computed per target, then averaged like the per-step values")
POOLED_DEFINITION = ("pooled: mean over all targets (one label of one case); per label: mean over the cases that "
                     "hold the label")


def held_out_cases(dataset_name: str, fold: int):
    """(case, image files, label file) of the fold's validation cases in imagesTr/labelsTr, and the dataset.json."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder
    raw = os.path.join(os.environ["nnUNet_raw"], dataset_name)
    dj = read_json(os.path.join(raw, "dataset.json"), "dataset.json")
    ending = dj["file_ending"]
    splits = read_json(os.path.join(os.environ["nnUNet_preprocessed"], dataset_name, "splits_final.json"),
                       "splits_final.json")
    cases = sorted(splits[fold]["val"])
    images, labels = os.path.join(raw, "imagesTr"), os.path.join(raw, "labelsTr")
    files = {os.path.basename(f[0])[:-len(ending) - 5]: f for f in create_lists_from_splitted_dataset_folder(images, ending)}
    missing = [c for c in cases if c not in files]
    if missing:
        raise FileNotFoundError(f"Images of held-out case(s) {missing} are missing in '{images}'.")
    return [(c, files[c], os.path.join(labels, c + ending)) for c in cases], dj


def labelled_folder_cases(images: str, labels: str, ending: str, num_channels: int):
    """(case, image files, label file) of a labelled folder pair in nnU-Net's naming (CASE_0000{ending}, ...;
    CASE{ending}). Every label needs its image channels and every image its label: a case without either would
    silently drop out of the means."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder
    for what, folder, flag in (("Image", images, "-i"), ("Label", labels, "-l")):
        if not os.path.isdir(folder):
            raise EvaluationError(f"{what} folder '{folder}' ({flag}) does not exist.")
    label_cases = sorted(f[:-len(ending)] for f in os.listdir(labels) if f.endswith(ending))
    if not label_cases:
        raise EvaluationError(f"No label files ending in '{ending}' in '{labels}' (-l).")
    files = {os.path.basename(f[0])[:-len(ending) - 5]: f for f in create_lists_from_splitted_dataset_folder(images, ending)}
    for case in label_cases:
        if case not in files:
            raise EvaluationError(f"Case '{case}': label file '{os.path.join(labels, case + ending)}' has no image "
                                  f"'{os.path.join(images, case + '_0000' + ending)}' in '{images}'.")
        if len(files[case]) != num_channels:
            raise EvaluationError(f"Case '{case}': {len(files[case])} image channel file(s) in '{images}' "
                                  f"({[os.path.basename(f) for f in files[case]]}); the model takes {num_channels} "
                                  f"(CASE_0000{ending} ... CASE_{num_channels - 1:04d}{ending}).")
    for case in sorted(set(files) - set(label_cases)):
        raise EvaluationError(f"Case '{case}': image '{files[case][0]}' has no label file "
                              f"'{os.path.join(labels, case + ending)}' in '{labels}'. Add its label or move the image "
                              f"out of '{images}'.")
    return [(c, files[c], os.path.join(labels, c + ending)) for c in label_cases]


def parse_label_map(items: Sequence[str], dataset_json: dict) -> Dict[int, int]:
    """``--label-map``: ``FOLDER_VALUE=MODEL_LABEL`` items, or one JSON file ``{"FOLDER_VALUE": MODEL_LABEL}``, a model
    label being a name or a value of the model's dataset.json -> {folder value: model value}. Background (0) maps to
    0 unless the map says otherwise; a value mapped to 0 or "background" is left out (a structure the model does
    not know); several values may map to one label (merged)."""
    if len(items) == 1 and "=" not in items[0]:
        pairs = read_json(items[0], "label map (--label-map)")
        if not isinstance(pairs, dict):
            raise EvaluationError(f"Label map '{items[0]}' must be a JSON object {{\"FOLDER_VALUE\": MODEL_LABEL}}.")
        pairs, source = list(pairs.items()), f"label map '{items[0]}'"
    else:
        pairs, source = [tuple(i.partition("=")[::2]) for i in items], "--label-map"
    names = {n: int(v) for n, v in dataset_json["labels"].items() if not isinstance(v, (list, tuple))}
    mapping: Dict[int, int] = {}
    for key, target in pairs:
        value = int(key) if str(key).strip().isdigit() else -1
        if value < 0:
            raise EvaluationError(f"{source}: {key!r} is not a label value of the folder (a whole number >= 0); "
                                  f"write FOLDER_VALUE=MODEL_LABEL, e.g. 3=1 or 3=tumour.")
        if value in mapping:
            raise EvaluationError(f"{source} maps the folder's value {value} twice.")
        model = names.get(str(target).strip())
        if model is None and str(target).strip().isdigit() and int(target) in names.values():
            model = int(target)
        if model is None:
            raise EvaluationError(f"{source}: {value}={target}: {target!r} is neither a label name nor a label value "
                                  f"of the model's dataset.json ({names}).")
        mapping[value] = model
    mapping.setdefault(0, 0)
    return mapping


def _image_grid(path: str):
    """Shape (1, z, y, x) and nnU-Net-style properties of an image from its header only (no voxel data read)."""
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    spacing = reader.GetSpacing()
    return (1, *reader.GetSize()[::-1]), {"spacing": list(spacing[::-1]), "sitk_stuff": {
        "spacing": spacing, "origin": reader.GetOrigin(), "direction": reader.GetDirection()}}


def read_reference(rw, case: str, images: Sequence[str], label_file: str, dataset_json: dict,
                   label_map: Optional[Dict[int, int]]):
    """A case's reference as the model's label values (z, y, x) and its spacing (z, y, x), after checking that the
    image files are whole, that the label map holds only known values and lies on the image's grid."""
    from nnunet_prompt.image_files import ImageFileError, check_image_file
    if label_map is None:
        values = {int(v) for v in dataset_json["labels"].values() if not isinstance(v, (list, tuple))}
        seg, props = _read_label_map(rw, label_file, case, values)
    else:
        seg, props = _read_label_map(rw, label_file, case, set(label_map), "--label-map",
                                     "Map every value of the folder's labels (VALUE=0 leaves a structure out).")
        u, inverse = np.unique(seg.astype(np.int64), return_inverse=True)
        seg = np.asarray([label_map[int(v)] for v in u])[inverse].reshape(seg.shape)
    for image in images:
        try:
            check_image_file(image)
            shape, iprops = _image_grid(image)
        except ImageFileError as e:
            raise EvaluationError(f"Case '{case}': {e}") from None
        except RuntimeError as e:
            raise EvaluationError(f"Case '{case}': '{image}' cannot be read "
                                  f"({str(e).strip().splitlines()[-1]}).") from None
        problems = grid_problems(shape, iprops, seg.shape, props)
        if problems:
            raise EvaluationError(f"Case '{case}': label file '{label_file}' does not lie on the grid of its image "
                                  f"'{image}': {'; '.join(problems)}. Resample the label onto the image (nearest "
                                  f"neighbour), or pair it with the image it was drawn on.")
    return seg[0], tuple(float(s) for s in props["spacing"])


def run_protocol(session, label_map: np.ndarray, label: int, start: str, clicks: Sequence[int], spacing_zyx,
                 nsd_tolerance_mm: float, seed: int) -> List[dict]:
    """One target through one protocol; returns a row per requested N."""
    from nnunet_prompt.evaluation.metrics import binary_metrics
    target = label_map == label
    rng = np.random.default_rng(seed)
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
            click = next_click_mm(mask > 0, target, spacing_zyx, rng)
            if click is not None:  # else nothing is left to correct: the result stays as it is
                (z, y, x), positive = click
                mask = session.add_point((x, y, z), positive=positive)
        if n in clicks:
            m = binary_metrics(mask > 0, target, spacing_zyx, nsd_tolerance_mm)
            rows.append({"n": n, "Dice": m["Dice"], "NSD": m["NSD"], "latency_ms": session.last_latency_ms})
    return rows


def protocol_runs(protocol: str, starts: Sequence[str], clicks: Sequence[int]):
    """(name in the outputs, first interaction, the Ns to record) of each run a protocol makes per target."""
    if protocol == "cvpr25":
        return [("cvpr25", "box", list(range(1, len(CVPR25_STEPS) + 1)))]
    return [(s, s, list(clicks)) for s in starts]


def interactive_eval(dataset_name: str, configuration: str, fold, trainers: Sequence[str], plans: str,
                     clicks: Sequence[int], output_folder: str, device: str = "cpu", nsd_tolerance_mm: float = 2.0,
                     seed: int = 0, use_test_set: bool = False, starts: Sequence[str] = STARTS,
                     session_kwargs: Optional[dict] = None, images: Optional[str] = None,
                     labels: Optional[str] = None, label_map: Optional[Sequence[str]] = None,
                     protocol: str = "nclick") -> dict:
    """``images``/``labels``: a labelled folder pair to evaluate instead of the fold's validation cases
    (``use_test_set``: the dataset's imagesTs/labelsTs); ``label_map``: ``--label-map`` items (``parse_label_map``).
    ``session_kwargs`` go to every InteractiveSession (e.g. ``{"cross_patch": True}``). Every case is checked before
    the first model is loaded; a failed run leaves nothing new in ``output_folder``."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunet_prompt.prompts.model import foreground_labels

    folders = [get_output_folder(dataset_name, t, plans, configuration) for t in trainers]
    if images is None and not use_test_set:
        cases, dj = held_out_cases(dataset_name, fold)
    else:
        dj = _model_dataset_json(folders)
        if images is None:
            raw = os.path.join(os.environ["nnUNet_raw"], dataset_name)
            images, labels = os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs")
        cases = labelled_folder_cases(images, labels, dj["file_ending"], len(dj["channel_names"]))
    targets = foreground_labels(dj)
    mapping = parse_label_map(label_map, dj) if label_map else None
    rw = determine_reader_writer_from_dataset_json(dj, cases[0][2], True, False)()
    # every case is checked before a model is loaded: a bad file found after an hour of inference costs the hour
    for case, image_files, label_file in cases:
        read_reference(rw, case, image_files, label_file, dj, mapping)
    with remove_new_outputs_on_failure(output_folder):
        rows = _evaluate(folders, trainers, fold, device, session_kwargs, cases, rw, dj, mapping, targets,
                         protocol_runs(protocol, starts, clicks), nsd_tolerance_mm, seed)
        report = {"protocol": protocol, "clicks": list(clicks) if protocol == "nclick" else None,
                  "nsd_tolerance_mm": nsd_tolerance_mm, "seed": seed,
                  "session": dict(session_kwargs or {}), "images": images, "labels": labels,
                  "label_map": {str(k): v for k, v in mapping.items()} if mapping else None,
                  "cases": [c for c, _, _ in cases], "definitions": {"pooled": POOLED_DEFINITION}}
        report.update(summarise(rows))
        if protocol == "cvpr25":
            report["cvpr25"] = cvpr25_summary(rows)
            report["definitions"]["cvpr25"] = {"steps": list(CVPR25_STEPS), "AUC": AUC_DEFINITION}
        write_outputs(rows, report, output_folder)
    return report


def _model_dataset_json(folders: Sequence[str]) -> dict:
    """The models' dataset.json (the labels their outputs mean); all models must share its labels."""
    jsons = []
    for folder in folders:
        path = os.path.join(folder, "dataset.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No trained model in '{folder}' (no dataset.json): train it first, or check -tr, "
                                    f"-p and -c.")
        jsons.append(read_json(path, "dataset.json"))
    for folder, dj in zip(folders[1:], jsons[1:]):
        if dj["labels"] != jsons[0]["labels"]:
            raise EvaluationError(f"The models in '{folders[0]}' and '{folder}' have different labels "
                                  f"({jsons[0]['labels']} vs {dj['labels']}): evaluate them separately.")
    return jsons[0]


def _evaluate(folders, trainers, fold, device, session_kwargs, cases, rw, dj, mapping, targets, runs,
              nsd_tolerance_mm, seed) -> List[dict]:
    from nnunet_prompt.inference.session import InteractiveSession
    rows: List[dict] = []
    for folder, trainer in zip(folders, trainers):
        session = InteractiveSession(folder, fold=fold, device=device, **(session_kwargs or {}))
        for case, image_files, label_file in tqdm(cases, desc=f"{trainer}: interactive protocol"):
            label_map, spacing_zyx = read_reference(rw, case, image_files, label_file, dj, mapping)
            session.set_image(list(image_files))
            for name, value in targets.items():
                if not (label_map == value).any():
                    continue
                # seeded by the model's label value, so a renamed folder (--label-map) gets the same first clicks
                case_seed = seed * 100003 + zlib.crc32(f"{case}:{value}".encode()) % 100003
                for run_name, start, ns in runs:
                    for r in run_protocol(session, label_map, value, start, ns, spacing_zyx, nsd_tolerance_mm,
                                          case_seed):
                        rows.append({"trainer": trainer, "case": case, "label": name, "start": run_name, **r})
    return rows


def _mean(rows: List[dict]) -> Dict[str, float]:
    return {"Dice": float(np.nanmean([r["Dice"] for r in rows])), "NSD": float(np.nanmean([r["NSD"] for r in rows])),
            "targets": len(rows)}


def summarise(rows: List[dict]) -> dict:
    """{"mean": trainer -> start -> N -> pooled Dice / NSD / targets, "per_label": trainer -> start -> label -> N ->
    the same over that label's targets}."""
    grouped: Dict = {}
    for r in rows:
        grouped.setdefault(r["trainer"], {}).setdefault(r["start"], {}).setdefault(r["n"], []).append(r)

    def per_label(v):
        labels: Dict[str, List[dict]] = {}
        for r in v:
            labels.setdefault(r["label"], []).append(r)
        return labels

    pooled = {t: {s: {n: _mean(v) for n, v in sorted(by_n.items())} for s, by_n in by_start.items()}
              for t, by_start in grouped.items()}
    labelled: Dict = {}
    for t, by_start in grouped.items():
        for s, by_n in by_start.items():
            for n, v in sorted(by_n.items()):
                for label, lv in per_label(v).items():
                    labelled.setdefault(t, {}).setdefault(s, {}).setdefault(label, {})[n] = _mean(lv)
    return {"mean": pooled, "per_label": labelled}


def auc(values: Sequence[float]) -> float:
    """Trapezoid area under a metric-vs-step curve with the steps 1 apart, divided by the number of intervals, so a
    curve at 1 throughout gives 1 (AUC_DEFINITION)."""
    v = np.asarray(values, float)
    return float(np.sum((v[1:] + v[:-1]) / 2) / (len(v) - 1))


def cvpr25_summary(rows: List[dict]) -> Dict[str, Dict[str, dict]]:
    """trainer -> "pooled" / label -> DSC_AUC, NSD_AUC, DSC_final, NSD_final (means over targets), targets."""
    per_target: Dict = {}
    for r in rows:
        if r["start"] == "cvpr25":
            per_target.setdefault((r["trainer"], r["case"], r["label"]), []).append(r)
    scores: Dict = {}
    for (trainer, _, label), rs in per_target.items():
        rs = sorted(rs, key=lambda r: r["n"])
        score = {"DSC_AUC": auc([r["Dice"] for r in rs]), "NSD_AUC": auc([r["NSD"] for r in rs]),
                 "DSC_final": rs[-1]["Dice"], "NSD_final": rs[-1]["NSD"]}
        for group in (POOLED, label):
            scores.setdefault(trainer, {}).setdefault(group, []).append(score)
    return {t: {g: {k: float(np.nanmean([s[k] for s in v])) for k in v[0]} | {"targets": len(v)}
                for g, v in by_group.items()} for t, by_group in scores.items()}


def summary_table(report: dict) -> List[dict]:
    """One row per trainer, start, target (pooled first, then each label) and N; for cvpr25 also N = "AUC" (the
    Dice and NSD columns then hold DSC_AUC and NSD_AUC)."""
    table = []
    for trainer, by_start in report["mean"].items():
        for start, by_n in by_start.items():
            groups = {POOLED: by_n, **report["per_label"][trainer][start]}
            for group, values in groups.items():
                for n, v in values.items():
                    table.append({"trainer": trainer, "start": start, "target": group, "n": n, **v})
                if start == "cvpr25":
                    a = report["cvpr25"][trainer][group]
                    table.append({"trainer": trainer, "start": start, "target": group, "n": "AUC",
                                  "Dice": a["DSC_AUC"], "NSD": a["NSD_AUC"], "targets": a["targets"]})
    return table


def write_outputs(rows: List[dict], report: dict, output_folder: str) -> None:
    """interactive_eval.csv (per target and N), _summary.csv and .md (per label and pooled), .json, .png."""
    os.makedirs(output_folder, exist_ok=True)
    base = os.path.join(output_folder, "interactive_eval")
    _write_csv(base + ".csv", rows, ["trainer", "case", "label", "start", "n", "Dice", "NSD", "latency_ms"])
    table = summary_table(report)
    _write_csv(base + "_summary.csv", table, ["trainer", "start", "target", "n", "Dice", "NSD", "targets"])
    lines = ["| trainer | start | target | N | Dice | NSD | targets |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['trainer']} | {r['start']} | {r['target']} | {r['n']} | {r['Dice']:.4f} | {r['NSD']:.4f} | "
              f"{r['targets']} |" for r in table]
    lines += ["", f"NSD tolerance {report['nsd_tolerance_mm']} mm; {POOLED_DEFINITION}."]
    if "cvpr25" in report:
        lines += [f"cvpr25 steps: {', '.join(CVPR25_STEPS)} (N = 1 ... 6); {AUC_DEFINITION}."]
    with atomic_path(base + ".md") as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
    atomic_write_json(report, base + ".json")
    plot_curves(report, base + ".png")


def _write_csv(path: str, rows: List[dict], fields: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(fields))
            w.writeheader()
            w.writerows(rows)


def plot_curves(report: dict, png: str) -> None:
    """One row of Dice / NSD panels for the pooled means, then one per label; every trainer and start on each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = sorted({lab for by_start in report["per_label"].values() for by_label in by_start.values()
                     for lab in by_label})
    groups = [POOLED, *labels]
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.6 * len(groups)), squeeze=False)
    for trainer, by_start in report["mean"].items():
        for start, by_n in by_start.items():
            for row, group in zip(axes, groups):
                values = by_n if group == POOLED else report["per_label"][trainer][start].get(group)
                if not values:
                    continue
                ns = sorted(values)
                for ax, metric in zip(row, ("Dice", "NSD")):
                    ax.plot(ns, [values[n][metric] for n in ns], marker="o",
                            linestyle="-" if start == "clicks" else "--", label=f"{trainer} ({start})")
    for row, group in zip(axes, groups):
        for ax, metric in zip(row, ("Dice", "NSD")):
            ax.set_title(f"{group}: mean {metric}", fontsize=9)
            ax.set_xlabel("interactions (clicks; a box counts as one)")
            ax.set_ylabel(f"mean {metric}")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)

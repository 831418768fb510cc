"""The `nnunet-prompt` command."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence


def _step_size(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{value!r}: the sliding-window step is a fraction of the patch size, "
                                         f"0 < step <= 1 (nnU-Net's default 0.5)")
    return v


def _fold(value: str):
    if value == "all":
        return value
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a fold is a number (0, 1, ...) or 'all'") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: folds are numbered from 0 (fold_0, fold_1, ...) or 'all'")
    return v


def _fold_number(value: str) -> int:
    """A cross-validation fold whose validation cases are used (not 'all': that fold has none)."""
    if value == "all":
        raise argparse.ArgumentTypeError("'all': fold 'all' has no validation cases; give a fold number (0, 1, ...)")
    try:
        return _fold(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{value!r}: a fold is a number: 0, 1, ...") from None


def _positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number of at least 1")
    return v


def _device(name: str) -> str:
    """'auto' -> cuda if torch sees a GPU, else cpu; said on stdout, so a log shows where a run ran."""
    if name == "auto":
        import torch
        name = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"nnunet-prompt: device: {name} (-device auto)")
    elif name.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            from nnunet_prompt.io_utils import InputFileError
            raise InputFileError(f"-device {name}: torch sees no CUDA GPU on this machine. Use -device cpu (or "
                                 f"auto, the default).")
    return name


def _cmd_trainer_path(a) -> None:
    from nnunet_prompt.nnunet_env import trainer_path
    print(trainer_path())


def _cmd_demo(a) -> None:
    from nnunet_prompt.demo.run import run_demo
    run_demo(a.workdir, a.num_training, a.num_test, a.device, a.np)


def _find_planner(name: str):
    import nnunetv2
    import nnunet_prompt_planners
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    cls = recursive_find_python_class(os.path.join(nnunet_prompt_planners.__path__[0]), name, "nnunet_prompt_planners")
    if cls is None:
        cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"), name,
                                          "nnunetv2.experiment_planning")
    if cls is None:
        raise SystemExit(f"Unknown planner '{name}': not in nnunet-prompt's planners/ nor in nnunetv2.experiment_planning.")
    return cls


def planner_names() -> dict:
    """{planner class name: where it lives} for nnunet-prompt's planners and nnU-Net's experiment planners."""
    import importlib
    import pkgutil

    import nnunet_prompt_planners
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner
    import nnunetv2.experiment_planning.experiment_planners as nnunet_planners
    base = default_experiment_planner.ExperimentPlanner
    found = {}
    for package, label in ((nnunet_prompt_planners, "nnunet-prompt"), (nnunet_planners, "nnU-Net")):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            try:
                module = importlib.import_module(info.name)
            except Exception:  # noqa: BLE001 - a planner module that does not import is not offered
                continue
            for name, obj in vars(module).items():
                if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == module.__name__:
                    found.setdefault(name, label)
    return found


class _PlannerListAction(argparse.Action):
    """--help of `plan`: the planners that exist, found when asked (importing them all costs a second)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        names = planner_names()
        lines = [f"  {n:<34}({w})" for w, group in (("nnunet-prompt", 0), ("nnU-Net", 1))
                 for n in sorted(k for k, v in names.items() if v == w)]
        parser.epilog = "planners (-pl):\n" + "\n".join(lines)
        parser.print_help()
        parser.exit()


def _cmd_plan(a) -> None:
    from nnunet_prompt.nnunet_env import dataset_name, require_folders
    require_folders("nnUNet_raw", "nnUNet_preprocessed")
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id
    from nnunet_prompt.io_utils import read_json
    name = dataset_name(a.dataset)
    did = convert_dataset_name_to_id(name)
    raw_json = os.path.join(os.environ["nnUNet_raw"], name, "dataset.json")
    if os.path.isdir(os.path.dirname(raw_json)):  # nnU-Net reads it without a word on what is wrong
        read_json(raw_json, "dataset.json")
    planner = _find_planner(a.pl)
    fp = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name(a.dataset), "dataset_fingerprint.json")
    if not os.path.isfile(fp):
        extract_fingerprint_dataset(did, num_processes=a.npfp, check_dataset_integrity=True)
    _, plans_identifier = plan_experiment_dataset(did, planner, overwrite_plans_name=a.overwrite_plans_name)
    print(f"plans written: {plans_identifier}")
    if not a.no_pp:
        preprocess_dataset(did, plans_identifier, tuple(a.c), [a.np] * len(a.c))


def _check_folders(a) -> None:
    """nnUNet_results is set, and -o is a writable folder other than -i, before anything is loaded."""
    from nnunet_prompt.io_utils import require_output_folder
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered, require_folders
    from nnunet_prompt.prompts.model import PromptError
    require_folders("nnUNet_results")
    ensure_trainer_path_registered()
    if os.path.isdir(a.i) and os.path.isdir(a.o) and os.path.samefile(a.i, a.o):
        raise PromptError(f"-o '{a.o}' and -i '{a.i}' are the same folder: the segmentations and nnU-Net's JSON files "
                          f"would be written among the images. Give another output folder.")
    require_output_folder(a.o)


def _model_folder(a) -> str:
    """The model folder of -d/-tr/-p/-c; predict --zero-shot: the one built (or reused) for the SAM file."""
    from nnunet_prompt.nnunet_env import dataset_name
    from nnunet_prompt.prompts.model import PromptError
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    if getattr(a, "zero_shot", False):  # a model folder for the file as is (inference.zero_shot), then as any model
        from nnunet_prompt.inference.zero_shot import ZERO_SHOT_FOLD, build_zero_shot_model
        if not a.sam_checkpoint:
            raise PromptError("--zero-shot needs --sam-checkpoint FILE (a MedSAM or official SAM .pth).")
        a.f = [ZERO_SHOT_FOLD]
        return build_zero_shot_model(a.d, a.p, a.c, a.tr, a.sam_checkpoint, a.pixel_norm)
    if getattr(a, "sam_checkpoint", None) or getattr(a, "pixel_norm", "unit") != "unit":
        raise PromptError("--sam-checkpoint and --pixel-norm choose the file of --zero-shot; a trained model "
                          "rebuilds its network from its plans.json.")
    return get_output_folder(dataset_name(a.d), a.tr, a.p, a.c)


def _prompt_predictor(a):
    """The PromptPredictor of -d/-tr/-p/-c, folds -f, checkpoint -chk, as `predict` runs it: (predictor, model folder)."""
    import torch
    from nnunet_prompt.inference.predictor import PromptPredictor
    model_folder = _model_folder(a)
    device = _device(a.device)
    predictor = PromptPredictor(tile_step_size=a.step_size, use_gaussian=True, use_mirroring=not a.disable_tta,
                                perform_everything_on_device=True, device=torch.device(device), verbose=False,
                                allow_tqdm=True)
    predictor.initialize_from_trained_model_folder(model_folder, a.f, a.chk)
    return predictor, model_folder


def _cmd_predict(a) -> None:
    from nnunet_prompt.io_utils import remove_new_outputs_on_failure
    from nnunet_prompt.prompts.model import PromptError, load_prompts_file
    _check_folders(a)
    prompts = load_prompts_file(a.prompts) if a.prompts else {}
    predictor, model_folder = _prompt_predictor(a)
    if a.cross_patch:
        predictor.enable_cross_patch(model_folder, a.cross_patch_threshold, a.max_patches)
    if predictor.clinical_context is None and not a.prompts:
        raise PromptError(f"Model '{model_folder}' takes spatial prompts: give them with --prompts prompts.json "
                          f"(see docs/reference/prompts.md).")
    if a.clinical_text:
        if predictor.clinical_context is None:
            raise PromptError(f"--clinical-text was given, but model '{model_folder}' takes no clinical text.")
        from nnunet_prompt.clinical_text import read_sidecar_file
        predictor.set_clinical_text(read_sidecar_file(a.clinical_text), a.clinical_text)
    predictor.set_prompts(prompts, a.prompts, allow_missing=a.allow_missing_prompts)
    predictor.check_prompts_for_images(a.i)
    # a failed run removes what it wrote, unless the user asked for resumable runs (--continue_prediction)
    with remove_new_outputs_on_failure(a.o, keep=a.continue_prediction):
        predictor.predict_from_files(a.i, a.o, save_probabilities=a.save_probabilities,
                                     overwrite=not a.continue_prediction, num_processes_preprocessing=a.npp,
                                     num_processes_segmentation_export=a.nps)
        _write_timing(predictor, a.o)


def _write_timing(predictor, output_folder: str) -> None:
    """OUTPUT/timing.json: seconds per case (``PromptPredictor.timing_record``); a resumed run keeps the cases it
    did not predict again."""
    from nnunet_prompt.evaluation.compare import TIMING_FILE
    from nnunet_prompt.io_utils import atomic_write_json
    record = predictor.timing_record()
    path = os.path.join(output_folder, TIMING_FILE)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                record["cases"] = dict(json.load(f).get("cases", {}), **record["cases"])
        except ValueError:
            pass  # an unreadable earlier record is replaced
    atomic_write_json(record, path)


def _cmd_text_analysis(a) -> None:
    from nnunet_prompt.clinical_text import read_sidecar_file
    from nnunet_prompt.evaluation.text_analysis import text_analysis
    from nnunet_prompt.io_utils import InputFileError, remove_new_outputs_on_failure
    from nnunet_prompt.text.perturbation import parse_perturbation
    perturbation = parse_perturbation(a.perturb)  # the cheap checks first: nothing loaded for a typo
    entries = read_sidecar_file(a.clinical_text)
    if not os.path.isdir(a.l):
        raise InputFileError(f"Reference label folder '{a.l}' (-l) does not exist.")
    _check_folders(a)
    predictor, model_folder = _prompt_predictor(a)
    with remove_new_outputs_on_failure(a.o):
        report = text_analysis(predictor, model_folder, a.i, entries, a.clinical_text, a.l, perturbation, a.o,
                               a.npp, a.nps)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    o = report["overall"]
    print(f"{o['cases']} cases, input changed by the perturbation in {o['cases_with_changed_input']}")
    print(f"{'label':<14}{'Dice own/pert':>14}{'vol change ml':>15}{'side moved':>12}{'Dice ref own':>14}"
          f"{'Dice ref pert':>15}")
    for name, m in o["labels"].items():
        print(f"{name:<14}{fmt(m['dice_own_vs_perturbed']):>14}{fmt(m['volume_change_ml']):>15}"
              f"{fmt(m['side_moved']):>12}{fmt(m['dice_own_vs_reference']):>14}{fmt(m['dice_perturbed_vs_reference']):>15}")
    print(f"written: {a.o}/text_analysis.json, .csv, .png; predictions in {a.o}/predictions")


def _cmd_evaluate(a) -> None:
    from nnunet_prompt.evaluation.evaluate_folder import evaluate_folders, print_summary
    from nnunet_prompt.io_utils import read_json
    dataset_json = read_json(a.djfile, "dataset.json (-djfile)")
    out = a.o or os.path.join(a.pred_folder, "metrics.json")
    summary = evaluate_folders(a.gt_folder, a.pred_folder, dataset_json, a.nsd_tolerance, out, f"'{a.djfile}'")
    print_summary(summary)
    print(f"\nwritten: {out} and {os.path.splitext(out)[0] + '.csv'}")


def _registered_dataset(dataset) -> str:
    """Check nnU-Net's folder variables, make our trainers findable, and return 'DatasetXXX_Name'."""
    from nnunet_prompt.nnunet_env import dataset_name, ensure_trainer_path_registered, require_folders
    require_folders()
    ensure_trainer_path_registered()
    return dataset_name(dataset)


def _cmd_interactive_eval(a) -> None:
    from nnunet_prompt.evaluation.interactive_eval import interactive_eval
    from nnunet_prompt.io_utils import InputFileError, require_output_folder
    if (a.i is None) != (a.l is None):
        raise InputFileError("-i and -l go together: the images folder and its labels folder.")
    if a.i is not None and a.test_set:
        raise InputFileError("--test-set evaluates the dataset's imagesTs/labelsTs; -i/-l another folder: give one.")
    if a.label_map and a.i is None and not a.test_set:
        raise InputFileError("--label-map translates the labels of -i/-l (or --test-set); the fold's validation "
                             "cases already carry the model's labels.")
    if a.f == "all" and not a.test_set and a.i is None:
        raise InputFileError("-f all: fold 'all' has no validation cases; give a fold number, or evaluate the 'all' "
                             "model on imagesTs/labelsTs with --test-set (or on a folder with -i/-l).")
    if a.protocol == "cvpr25" and (a.clicks or a.starts):
        raise InputFileError("--protocol cvpr25 fixes its steps (the target's box, then 5 clicks): leave out "
                             "--clicks and --starts.")
    name = _registered_dataset(a.d)
    if a.o is None and a.i is not None:
        raise InputFileError("-i/-l: give the output folder with -o.")
    out = a.o or os.path.join(os.environ["nnUNet_results"], name, f"interactive_eval_{a.c}_fold{a.f}")
    require_output_folder(out)
    session_kwargs = ({"cross_patch": True, "cross_patch_threshold": a.cross_patch_threshold,
                       "max_patches": a.max_patches} if a.cross_patch else None)
    report = interactive_eval(name, a.c, a.f, a.tr, a.p, sorted(set(a.clicks or [1, 3, 5, 7, 9])), out,
                              _device(a.device), a.nsd_tolerance, a.seed, a.test_set, a.starts or ["clicks", "box"],
                              session_kwargs, a.i, a.l, a.label_map, a.protocol)
    for trainer, by_start in report["mean"].items():
        for start, by_n in by_start.items():
            groups = {"pooled": by_n, **report["per_label"][trainer][start]}
            for group, values in groups.items():
                print(f"{trainer:<28}{start:<8}{group:<14}" + "  ".join(
                    f"N={n}: Dice {v['Dice']:.3f} NSD {v['NSD']:.3f}" for n, v in values.items()))
    for trainer, by_group in report.get("cvpr25", {}).items():
        for group, v in by_group.items():
            print(f"{trainer:<28}cvpr25  {group:<14}DSC AUC {v['DSC_AUC']:.3f}  NSD AUC {v['NSD_AUC']:.3f}  "
                  f"final DSC {v['DSC_final']:.3f}  final NSD {v['NSD_final']:.3f}")
    print(f"written: {out}/interactive_eval.csv, _summary.csv, .md, .json, .png")


def _cmd_compare(a) -> None:
    from nnunet_prompt.evaluation.compare import compare, compare_predictions
    from nnunet_prompt.evaluation.evaluate_folder import EvaluationError
    name = _registered_dataset(a.d)
    if a.predictions:
        if not a.l:
            raise EvaluationError("--predictions compares test predictions: give their reference labels with -l.")
        predictions = {}
        for item in a.predictions:
            label, sep, folder = item.partition("=")
            if not sep or not label or not folder:
                raise EvaluationError(f"--predictions entry {item!r}: write NAME=FOLDER (e.g. nnunet=preds/nnunet).")
            if label in predictions:
                raise EvaluationError(f"--predictions names '{label}' twice.")
            predictions[label] = folder
        baseline = a.baseline or next(iter(predictions))
        from nnunet_prompt.nnunet_env import dataset_json_of
        out = a.o or os.path.join(os.environ["nnUNet_results"], name, "compare_test")
        compare_predictions(predictions, a.l, dataset_json_of(name), baseline, out, a.nsd_tolerance)
    else:
        if a.l:
            raise EvaluationError("-l is for --predictions (test predictions); cross-validation compares against "
                                  "nnU-Net's gt_segmentations.")
        out = a.o or os.path.join(os.environ["nnUNet_results"], name, f"compare_{a.c}")
        compare(name, a.c, a.baseline or "nnUNetTrainer", a.trainers, a.p, a.f, out, a.nsd_tolerance)
    print(open(os.path.join(out, "report.md")).read())
    print(f"written: {out}/report.md, compare.json, compare_boxplots.png")


def _cmd_convert(a) -> None:
    from nnunet_prompt.nnunet_env import require_folders
    from nnunet_prompt_datasets.case_model import ConvertOptions
    from nnunet_prompt_datasets.convert import convert_dataset
    require_folders("nnUNet_raw")
    from nnunet_prompt.io_utils import require_output_folder
    require_output_folder(os.environ["nnUNet_raw"], "$nnUNet_raw")
    options = ConvertOptions(structure_map=a.structure_map, strict=a.strict, overlap=a.overlap, rgb_fusion=a.rgb_fusion,
                             resample_oblique=a.resample_oblique, modalities=tuple(a.modalities or ()))
    out = convert_dataset(a.format, a.source, a.dataset_id, a.name, os.environ["nnUNet_raw"], options, a.clinical,
                          a.np, a.overwrite)
    print(f"written: {out} (per-patient structure reports in {out}/conversion_report/); next: "
          f"nnUNetv2_plan_and_preprocess -d {a.dataset_id} -c 3d_fullres")


def _convert_help() -> str:
    from nnunet_prompt_datasets.format_layouts import LAYOUTS
    text = "Expected input layout per format:\n\n"
    for name, layout in LAYOUTS.items():
        text += f"{name}:\n  " + layout.replace("\n", "\n  ") + "\n\n"
    return text + ("Writes $nnUNet_raw/DatasetNNN_NAME atomically (temporary folder, renamed at the end, after nnU-Net's "
                   "integrity check). An existing target is refused unless --overwrite. See docs/how_to/conversion.md.")


def _cmd_boxes_from_labels(a) -> None:
    from nnunet_prompt.interaction.boxes_from_labels import boxes_from_labels, plans_transpose_forward, report_empty
    from nnunet_prompt.io_utils import InputFileError, read_json
    from nnunet_prompt.nnunet_env import dataset_name
    from nnunet_prompt.prompts.model import save_prompts_file
    if os.path.exists(a.o) and not a.overwrite:
        raise InputFileError(f"'{a.o}' (-o) exists; give another file or --overwrite to replace it.")
    if os.path.isdir(a.o):
        raise InputFileError(f"'{a.o}' (-o) is a folder: give a file name (prompts.json).")
    name = dataset_name(a.d)
    candidates = [os.path.join(os.environ.get(k, ""), name, "dataset.json") for k in ("nnUNet_raw", "nnUNet_preprocessed")]
    found = [c for c in candidates if os.path.isfile(c)]
    if not found:
        raise InputFileError(f"No dataset.json for {name} (looked for {candidates}).")
    dataset_json = read_json(found[0], "dataset.json")
    margin = (a.margin_mm, a.margin_mm) if a.margin_mm is not None else tuple(a.margin_mm_range)
    if not 0 <= margin[0] <= margin[1]:
        raise InputFileError(f"margins must satisfy 0 <= low <= high (mm), got {list(margin)}")
    transpose = plans_transpose_forward(name, a.p) if a.p else None
    prompts, empty = boxes_from_labels(a.l, dataset_json, margin, a.seed, transpose)
    save_prompts_file(prompts, a.o)  # atomic: a temporary file renamed into place
    report_empty(empty)
    n = sum(len(b.boxes) for ps in prompts.values() for b in ps)
    print(f"written: {a.o} ({len(prompts)} case(s), {n} boxes; margins {margin[0]:g}-{margin[1]:g} mm, seed {a.seed})")


def _cmd_upgrade_model(a) -> None:
    from nnunet_prompt.model_record import PLANS_KEY, upgrade_model_folder
    for folder in a.model_folder:
        record = upgrade_model_folder(folder)
        if record is None:
            print(f"{folder}: up to date (its plans.json has the '{PLANS_KEY}' record)")
        else:
            print(f"{folder}: plans.json now holds the '{PLANS_KEY}' record of {record.trainer} "
                  f"(previous plans kept as plans.before_upgrade.json)")


def _cross_patch_arguments(s, what: str) -> None:
    s.add_argument("--cross-patch", action="store_true",
                   help=f"CT-SAM3D's cross-patch prompt (models trained with PSAPTrainer_CPP only): {what} segments the "
                        "patch around it, then the model's CPP head proposes a click in each of the 26 neighbouring "
                        "patches (half a patch away) that the object reaches; proposals whose heatmap maximum reaches "
                        "--cross-patch-threshold are segmented and merged, repeatedly, so one click can segment an "
                        "object larger than a patch. Only the patches reached are predicted, not the whole image")
    s.add_argument("--cross-patch-threshold", type=float, default=0.5,
                   help="heatmap maximum (0-1) a neighbour needs to get a proposed click (default 0.5)")
    s.add_argument("--max-patches", type=int, default=27,
                   help="at most this many patches per click with --cross-patch (default 27)")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _model_arguments(s, trainer: str) -> None:
    """The trained model, as nnUNetv2_predict names it (``_prompt_predictor`` loads it)."""
    s.add_argument("-d", required=True, help="dataset id or name")
    s.add_argument("-c", default="3d_fullres")
    s.add_argument("-f", nargs="+", type=_fold, default=[0], help="folds (or 'all'); default 0")
    s.add_argument("-tr", default=trainer)
    s.add_argument("-p", default="nnUNetPlans")
    s.add_argument("-chk", default="checkpoint_final.pth")


def _prediction_arguments(s) -> None:
    """nnUNetv2_predict's options of the prediction itself."""
    s.add_argument("-step_size", type=_step_size, default=0.5,
                   help="sliding-window step as a fraction of the patch size, 0 < step <= 1 (default 0.5)")
    s.add_argument("--disable_tta", action="store_true")
    s.add_argument("-npp", type=int, default=1)
    s.add_argument("-nps", type=int, default=1)
    s.add_argument("-device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="auto (default): cuda if torch sees a GPU, else cpu")


def _cmd_serve(a) -> None:
    if a.host not in LOOPBACK and not a.api_key:
        raise SystemExit(f"nnunet-prompt serve: refusing to listen on {a.host} without an API key: anyone who reaches "
                         f"the port could use the model and read the images sent to it. Give --api-key KEY (or set "
                         f"NN_INTERACTIVE_API_KEY), or listen on 127.0.0.1 and use an SSH tunnel.")
    try:
        import uvicorn
        from nnunet_prompt.serve.app import make_app
    except ImportError as e:
        raise SystemExit(f"nnunet-prompt serve needs the server extras ({e.name} is missing): "
                         f"pip install 'nnunet-prompt[serve]'")
    from nnunet_prompt.inference.session import InteractiveSession, load_session_predictor
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
    from nnunet_prompt.serve.interactions import InteractionRefused, model_capabilities
    ensure_trainer_path_registered()
    if a.model_folder:
        folder = a.model_folder
    else:
        if not a.d:
            raise SystemExit("nnunet-prompt serve: give MODEL_FOLDER or -d DATASET (with -tr/-p/-c).")
        from nnunet_prompt.nnunet_env import dataset_name, require_folders
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        require_folders("nnUNet_results")
        folder = get_output_folder(dataset_name(a.d), a.tr, a.p, a.c)
    fold = a.f
    a.device = _device(a.device)
    predictor = load_session_predictor(folder, fold, a.device, a.chk)
    try:
        supported = model_capabilities(predictor)
    except InteractionRefused as e:
        raise SystemExit(f"nnunet-prompt serve: {e}")

    def new_session():
        return InteractiveSession(folder, fold, a.device, a.chk, cross_patch=a.cross_patch,
                                  cross_patch_threshold=a.cross_patch_threshold, max_patches=a.max_patches,
                                  keep_undo=not a.no_undo, predictor=predictor)

    new_session()  # fail now, not at the first client, if the session cannot be made (e.g. --cross-patch)
    app = make_app(new_session, predictor, supported, a.api_key, a.max_sessions, a.idle_timeout,
                   a.liveness_timeout, undo=not a.no_undo)
    takes = ", ".join(k for k, v in supported.items() if v)
    print(f"nnunet-prompt serve: {predictor.trainer_name} from {folder} (fold {a.f}, {a.device}); takes: {takes}")
    print(f"serving on http://{a.host}:{a.port}  (API key {'required' if a.api_key else 'off'}; "
          f"up to {a.max_sessions} session(s))", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level)



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet-prompt", description="Prompted segmentation on top of nnU-Net v2. "
                                "Train with nnU-Net's own command after `export nnUNet_extTrainer=$(nnunet-prompt "
                                "trainer-path)`: nnUNetv2_train DATASET 3d_fullres 0 -tr PromptTrainer",
                                epilog="`nnunet-prompt COMMAND --help` describes each command.")
    sub = p.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    s = sub.add_parser("trainer-path", help="print the folder to put into nnUNet_extTrainer")
    s.set_defaults(func=_cmd_trainer_path)

    s = sub.add_parser("demo", help="plain nnU-Net vs PromptTrainer on generated synthetic data (CPU, ~10 min)")
    s.add_argument("--workdir", default="demo_work", help="folder for data, models and results (default: demo_work)")
    s.add_argument("--num-training", type=int, default=20)
    s.add_argument("--num-test", type=int, default=12)
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("-np", type=int, default=2, help="processes for fingerprinting and preprocessing")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("plan", help="plan (and preprocess) a dataset with a planner of nnunet-prompt or nnU-Net",
                       description="Plan (and preprocess) a dataset with nnU-Net's planning API and a planner of "
                                   "nnunet-prompt (NarrowUNetPlanner: the default plans with feature widths / 4, "
                                   "SAM2DPlanner, SAMAdapter3DPlanner) or of nnU-Net (ExperimentPlanner, "
                                   "nnUNetPlannerResEncM, ...). --help lists them all.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    s.add_argument("-h", "--help", action=_PlannerListAction, help="show this help, with every planner, and exit")
    s.add_argument("dataset", help="dataset id or name")
    s.add_argument("-pl", default="NarrowUNetPlanner", help="planner class name (default: NarrowUNetPlanner; "
                   "--help lists them)")
    s.add_argument("-c", nargs="+", default=["3d_fullres"], help="configurations to preprocess")
    s.add_argument("-np", type=int, default=2, help="preprocessing processes")
    s.add_argument("-npfp", type=int, default=2, help="fingerprint processes")
    s.add_argument("--overwrite_plans_name", default=None)
    s.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    s.set_defaults(func=_cmd_plan)

    s = sub.add_parser("evaluate", help="Dice, IoU, HD95, ASSD and NSD of a prediction folder against references")
    s.add_argument("gt_folder")
    s.add_argument("pred_folder")
    s.add_argument("-djfile", required=True, help="dataset.json (labels and file ending)")
    s.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    s.add_argument("-o", default=None, help="output JSON (default PRED_FOLDER/metrics.json); a CSV is written beside it")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("interactive-eval", help="interactive protocols through the interactive session: CT-SAM3D's "
                                                "N clicks, or the CVPR 2025 challenge's box + 5 clicks",
                       description="Dice and NSD after each interaction, per label and pooled over all targets, on "
                                   "the fold's validation cases, on imagesTs/labelsTs (--test-set), or on any "
                                   "labelled folder pair (-i/-l, nnU-Net naming, optionally with --label-map).")
    s.add_argument("-d", required=True, help="dataset id or name (of the model)")
    s.add_argument("-c", default="3d_fullres")
    s.add_argument("-f", type=_fold, default=0, help="fold: its validation cases are evaluated (with --test-set or "
                   "-i/-l: the model fold to evaluate, 'all' allowed)")
    s.add_argument("-tr", nargs="+", default=["PromptTrainer"], help="one or more prompt trainers")
    s.add_argument("-p", default="nnUNetPlans")
    s.add_argument("--protocol", default="nclick", choices=["nclick", "cvpr25"],
                   help="nclick (default): CT-SAM3D's, first a click or a box (--starts), Dice/NSD after each of "
                        "--clicks; cvpr25: the CVPR 2025 challenge's, the target's box then 5 clicks, Dice/NSD after "
                        "each of the 6 steps, their area under the curve (normalised to [0, 1]) and final values")
    s.add_argument("--clicks", type=_positive_int, nargs="+", default=None,
                   help="nclick: report Dice/NSD after these numbers of interactions (each >= 1; default 1 3 5 7 9)")
    s.add_argument("--nsd-tolerance", type=float, default=2.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--test-set", action="store_true", help="use imagesTs/labelsTs instead of the fold's validation cases")
    s.add_argument("-i", default=None, metavar="IMAGES", help="a folder of images to evaluate on (CASE_0000.nii.gz, ...), with -l")
    s.add_argument("-l", default=None, metavar="LABELS", help="the labels of -i (CASE.nii.gz); every image needs its label and back")
    s.add_argument("--label-map", nargs="+", default=None, metavar="VALUE=LABEL",
                   help="-l/--test-set labels that differ from the model's: FOLDER_VALUE=MODEL_LABEL items (a model "
                        "label name or value; 0 or background leaves a structure out), e.g. 3=1 5=tumour 7=0, or one "
                        "JSON file {\"3\": 1, \"5\": \"tumour\"}; every value in the labels must be mapped (0 maps "
                        "to 0 unless given)")
    s.add_argument("--starts", nargs="+", default=None, choices=["clicks", "box"],
                   help="nclick: first interaction: a random click in the target, the target's box, or both "
                        "protocols (default)")
    _cross_patch_arguments(s, "every positive click")
    s.add_argument("-o", default=None, help="output folder (default: nnUNet_results/DATASET/interactive_eval_CONFIG_foldF; "
                   "required with -i/-l)")
    s.add_argument("-device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="auto (default): cuda if torch sees a GPU, else cpu")
    s.set_defaults(func=_cmd_interactive_eval)

    s = sub.add_parser("compare", help="models against a baseline on the same cases: metrics, bootstrap CIs, paired "
                                       "t-test and Wilcoxon test (cross-validation or test predictions)",
                       description="Cross-validation (default): the fold predictions of trained models, named as "
                                   "TRAINER (on -p/-c) or TRAINER__PLANS__CONFIGURATION (another plans or "
                                   "configuration, e.g. a 2d model against a 3d_fullres one). Test predictions: "
                                   "--predictions NAME=FOLDER ... with -l REFERENCE_LABELS.")
    s.add_argument("-d", required=True, help="dataset id or name")
    s.add_argument("-c", default="3d_fullres", help="configuration of models named without one (default 3d_fullres)")
    s.add_argument("--baseline", default=None, help="baseline model (cross-validation; default nnUNetTrainer) or the "
                   "NAME of one of --predictions (default: the first)")
    s.add_argument("--trainers", nargs="+", default=["PromptTrainer"],
                   help="models compared with the baseline: TRAINER or TRAINER__PLANS__CONFIGURATION")
    s.add_argument("-p", default="nnUNetPlans", help="plans of models named without them (default nnUNetPlans)")
    s.add_argument("-f", type=_fold_number, nargs="+", default=[0, 1, 2, 3, 4],
                   help="folds whose validation predictions are pooled (default 0 1 2 3 4)")
    s.add_argument("--predictions", nargs="+", default=None, metavar="NAME=FOLDER",
                   help="compare prediction folders of one test set instead (each from nnunet-prompt predict or "
                        "nnUNetv2_predict); a timing.json in a folder adds seconds per case and per slice")
    s.add_argument("-l", default=None, help="with --predictions: the reference label folder (e.g. labelsTs)")
    s.add_argument("--nsd-tolerance", type=float, default=2.0)
    s.add_argument("-o", default=None, help="output folder (default: nnUNet_results/DATASET/compare_CONFIG, or "
                   "compare_test with --predictions)")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("predict", help="predict with prompts (a prompts.json, see docs/reference/prompts.md)")
    s.add_argument("-i", required=True, help="input folder of images (nnU-Net naming, CASE_0000.nii.gz)")
    s.add_argument("-o", required=True, help="output folder")
    _model_arguments(s, "PromptTrainer")
    s.add_argument("--prompts", default=None, help="JSON file: case id -> prompt(s) (see docs/reference/prompts.md); a prompt's "
                   "'text' is the clinical text of text-conditioned models")
    s.add_argument("--clinical-text", default=None,
                   help="text-conditioned models: a clinical-text sidecar (clinical_text.json format) with each "
                        "case's text and fields; a prompt's 'text' takes precedence")
    s.add_argument("--allow-missing-prompts", action="store_true",
                   help="predict cases without a prompt entry as background instead of failing")
    s.add_argument("--zero-shot", action="store_true",
                   help="zero-shot MedSAM: predict the --sam-checkpoint file as is (no training) with -tr MedSAMTrainer's "
                        "network on the -p/-c SAM 2D plan; its model folder TRAINER_zeroShot__PLANS__CONFIG/fold_all is "
                        "built under nnUNet_results (reused when built from the same file)")
    s.add_argument("--sam-checkpoint", default=None, help="--zero-shot: the MedSAM or official SAM .pth file")
    s.add_argument("--pixel-norm", default="unit", choices=["unit", "imagenet"],
                   help="--zero-shot: the file's pixel normalisation: unit ([0, 1], MedSAM files; default) or imagenet "
                        "(official SAM files)")
    _cross_patch_arguments(s, "each positive click of a prompt")
    s.add_argument("--save_probabilities", action="store_true")
    s.add_argument("--continue_prediction", action="store_true")
    _prediction_arguments(s)
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("text-analysis", help="LLMSeg's text perturbation analysis: predict each case with its own "
                       "and with perturbed clinical text, and compare",
                       description="Predict every case of -i twice with a text-conditioned model (TextPromptTrainer), "
                       "with its own clinical entry and with the entry perturbed, and report per case and label: volume "
                       "change (ml), the share of the prediction that moved to the patient's other side (left/right "
                       "of the image centre along the patient's left-right axis, from the image geometry), Dice "
                       "between the two predictions and Dice of each against the reference label. Writes "
                       "OUTPUT/text_analysis.json, .csv, .png and both predictions (OUTPUT/predictions/own, /perturbed).",
                       epilog="Perturbations: laterality (left <-> right, whole words, case kept); n-stage (N0 -> N1, "
                       "N1/N2/N3 -> N0, NX kept); drop-field:NAME (remove a structured field, e.g. drop-field:N); "
                       "FILE.json (your replacements, {\"old\": \"new\", ...}, whole words, all at once). "
                       "See docs/reference/cli.md#text-analysis.")
    s.add_argument("-i", required=True, help="input folder of images (nnU-Net naming, CASE_0000.nii.gz)")
    s.add_argument("-o", required=True, help="output folder")
    s.add_argument("-l", required=True, help="folder of the cases' reference labels CASE.nii.gz (e.g. labelsTs)")
    s.add_argument("--clinical-text", required=True,
                   help="clinical-text sidecar (clinical_text.json format) with every case's own text and fields")
    s.add_argument("--perturb", required=True, metavar="PERTURBATION",
                   help="laterality | n-stage | drop-field:NAME | FILE.json (see below)")
    _model_arguments(s, "TextPromptTrainer")
    _prediction_arguments(s)
    s.set_defaults(func=_cmd_text_analysis)

    s = sub.add_parser("convert", help="convert clinical (DICOM RT) or public datasets into an nnU-Net raw dataset",
                       description="Convert SOURCE into $nnUNet_raw/DatasetNNN_NAME, ready for nnUNetv2_plan_and_preprocess.",
                       epilog=_convert_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("format", choices=list(__import__("nnunet_prompt_datasets.format_layouts", fromlist=["LAYOUTS"]).LAYOUTS))
    s.add_argument("source", help="the dataset's top folder (only read, never modified)")
    s.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id (1-999)")
    s.add_argument("--name", required=True, help="dataset name: DatasetNNN_NAME")
    s.add_argument("--structure-map", default=None, help="YAML: label -> aliases/regular expressions (default: the "
                   "shipped radiotherapy map for dicom-rt/folder, the dataset's own names for public datasets)")
    s.add_argument("--strict", action="store_true", help="an unmapped structure name is an error (default: reported)")
    s.add_argument("--overlap", choices=["priority", "regions"], default="priority",
                   help="overlapping structures: the map's priority order wins (default), or nnU-Net region labels")
    s.add_argument("--clinical", default=None, help="CSV: patient id -> laterality, T, N, M, surgery, ... "
                   "(writes the clinical text sidecar)")
    s.add_argument("--rgb-fusion", action="store_true", help="write CT/PET/MR fused as 3 RGB channels (the MedSAM study, SAM)")
    s.add_argument("--resample-oblique", action="store_true",
                   help="resample oblique or gantry-tilted DICOM series onto an axis-aligned grid instead of refusing them")
    s.add_argument("--modalities", nargs="+", default=None, help="folder format: image file names per case (default: CT)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing target dataset")
    s.add_argument("-np", type=int, default=1, help="patients converted in parallel (default: 1)")
    s.set_defaults(func=_cmd_convert)

    s = sub.add_parser("boxes-from-labels", help="write per-object, per-slice oracle boxes from label files as a "
                       "prompts file (the MedSAM study's box prompt)",
                       description="Write a prompts file (docs/reference/prompts.md) with, per case and per label present "
                                   "in its label file, one 2D box around every object (8-connected component) on every "
                                   "slice, each side widened by a margin in mm (the MedSAM study: random 0-20 mm). Give "
                                   "the same file to every model with `nnunet-prompt predict --prompts`, so all compared "
                                   "models see the same boxes. Boxes are in raw voxel coordinates (x, y, z), flat along "
                                   "the slice axis: with -p, the axis the plans' 2d configuration slices along (the "
                                   "first axis of transpose_forward), else each image's lowest-resolution axis (z for "
                                   "a typical axial CT). Label files are only read.")
    s.add_argument("-l", required=True, help="folder of label files CASE.nii.gz (e.g. $nnUNet_raw/DatasetXXX/labelsTs)")
    s.add_argument("-d", required=True, help="dataset id or name (its dataset.json: labels, file ending)")
    s.add_argument("-o", required=True, help="prompts file to write (JSON); written atomically")
    s.add_argument("-p", default=None, help="plans identifier (e.g. nnUNetPlans): slice along its transpose_forward's "
                   "first axis; default: each image's lowest-resolution axis")
    margin = s.add_mutually_exclusive_group()
    margin.add_argument("--margin-mm", type=float, default=None, help="one fixed margin for every side, in mm")
    margin.add_argument("--margin-mm-range", type=float, nargs=2, default=[0.0, 20.0], metavar=("LOW", "HIGH"),
                        help="each side's margin uniform in [LOW, HIGH] mm (default 0 20, the MedSAM study)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random margins (per case: seed + crc32(case))")
    s.add_argument("--overwrite", action="store_true", help="replace an existing -o file")
    s.set_defaults(func=_cmd_boxes_from_labels)

    s = sub.add_parser("upgrade-model", help="convert a model folder trained before the plans record (sidecar "
                       "files) into today's format",
                       description="Move an old model folder's description (prompt_encoding.json, clinical_context.json, "
                                   "sam_model.json, distill_teacher.json, old plans keys) into the one record in its "
                                   "plans.json that today's trainers and predictors read. Checkpoints are not touched; "
                                   "the old plans.json is kept as plans.before_upgrade.json.")
    s.add_argument("model_folder", nargs="+", help="nnU-Net model folder(s): .../DatasetXXX/TRAINER__PLANS__CONFIG")
    s.set_defaults(func=_cmd_upgrade_model)

    s = sub.add_parser("serve", help="serve a prompt model to 3D Slicer / napari (nnInteractive's remote protocol)",
                       description="Serve a trained prompt model over nnInteractive's HTTP protocol, so 3D Slicer's "
                                   "nnInteractive extension, napari-nninteractive and nninteractive-client can drive "
                                   "it. See docs/how_to/viewers.md.")
    s.add_argument("model_folder", nargs="?", default=None,
                   help="the trained model folder (or give -d/-tr/-p/-c as for `nnunet-prompt predict`)")
    s.add_argument("-d", default=None, help="dataset id or name (instead of MODEL_FOLDER)")
    s.add_argument("-tr", default="PromptTrainer")
    s.add_argument("-p", default="nnUNetPlans")
    s.add_argument("-c", default="3d_fullres")
    s.add_argument("-f", type=_fold, default=0, help="the fold to serve (or 'all'); default 0")
    s.add_argument("-chk", default="checkpoint_final.pth")
    s.add_argument("--device", default="auto", help="torch device: auto (cuda if torch sees a GPU, else cpu; the "
                   "default), cuda, cuda:1, cpu")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=1527, help="TCP port (default 1527, as nnInteractive)")
    s.add_argument("--api-key", default=os.environ.get("NN_INTERACTIVE_API_KEY"),
                   help="bearer token every request must carry (default: $NN_INTERACTIVE_API_KEY); required for a "
                        "non-loopback --host")
    s.add_argument("--max-sessions", type=int, default=4, help="clients served at once (default 4)")
    s.add_argument("--idle-timeout", type=float, default=600.0,
                   help="seconds without a user action before a session is reaped (default 600)")
    s.add_argument("--liveness-timeout", type=float, default=60.0,
                   help="seconds without any request (heartbeats included) before a crashed client's session is "
                        "reaped (default 60)")
    s.add_argument("--no-undo", action="store_true", help="keep no undo history (less memory per session)")
    _cross_patch_arguments(s, "each positive click")
    s.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")
    s.set_defaults(func=_cmd_serve)
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)  # before the heavy imports below: --help answers at once
    from nnunet_prompt.evaluation.evaluate_folder import EvaluationError
    from nnunet_prompt.nnunet_env import NnUNetEnvironmentError
    from nnunet_prompt.prompts.model import PromptError
    from nnunet_prompt_datasets.conversion_errors import ConversionError
    from nnunet_prompt.text.language_model import TextModelError
    from nnunet_prompt.sam.checkpoint import SAMCheckpointError
    from nnunet_prompt.model_record import ModelRecordError
    from nnunet_prompt.io_utils import InputFileError
    try:
        args.func(args)
    except (PromptError, NnUNetEnvironmentError, EvaluationError, FileNotFoundError, ConversionError,
            TextModelError, SAMCheckpointError, ModelRecordError, InputFileError) as e:
        print(f"nnunet-prompt: error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()

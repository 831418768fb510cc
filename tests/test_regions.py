"""Region datasets (`nnunet-prompt convert ... --overlap regions`): a prompt addresses one nnU-Net region, training
targets are 'that region vs rest', and the final validation is evaluated on regions as nnU-Net evaluates them;
the final validation exports through nnU-Net's export pool (here also checked against a sequential export on a
label dataset)."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import CONFIG, PLANS, console_script, plan_and_preprocess_tiny, run

TRAINER = "PromptTrainer_demo"
REGION_ID = 993
# nested structures: value 1 = CTV only, 2 = CTV and GTV (the converter numbers the combinations it finds)
EXPECTED_LABELS = {"background": 0, "CTV": [1, 2], "GTV": [2]}


def make_region_dataset(env, dataset_id: int, name: str) -> str:
    """Tiny phantoms as per-structure masks (GTV = the target lesion, CTV = GTV plus a 2-voxel margin), converted by
    our `folder` converter with --overlap regions, then nnU-Net's fingerprint, NarrowUNetPlanner plans and 3d_fullres
    preprocessing. The first validation case of fold 0 has CTV only (no GTV mask)."""
    from scipy.ndimage import binary_dilation
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    from nnunet_prompt_datasets.case_model import ConvertOptions
    from nnunet_prompt_datasets.convert import convert_dataset
    from nnunet_prompt_datasets.synthetic_hn import make_case

    src = os.path.join(os.path.dirname(env["nnUNet_raw"]), f"region_source_{dataset_id}")
    cases = [f"hn_{i:03d}" for i in range(6)]
    without_gtv = sorted(generate_crossval_split(cases, seed=12345, n_splits=5)[0]["val"])[0]
    for i, case in enumerate(cases):
        img, seg, _ = make_case(np.random.default_rng([0, i]), shape_xyz=(40, 40, 16))
        gtv = sitk.GetArrayFromImage(seg) == 1
        ctv = binary_dilation(gtv, iterations=2)
        os.makedirs(os.path.join(src, case, "masks"))
        sitk.WriteImage(img, os.path.join(src, case, "CT.nii.gz"))
        for structure, mask in (("CTV", ctv),) + ((("GTV", gtv),) if case != without_gtv else ()):
            m = sitk.GetImageFromArray(mask.astype(np.uint8))
            m.CopyInformation(img)
            sitk.WriteImage(m, os.path.join(src, case, "masks", f"{structure}.nii.gz"))
    smap = os.path.join(src, "map.yaml")
    with open(smap, "w") as f:
        f.write("labels:\n  CTV: [CTV]\n  GTV: [GTV]\n")
    raw = convert_dataset("folder", src, dataset_id, name, env["nnUNet_raw"],
                          ConvertOptions(structure_map=smap, overlap="regions"))
    plan_and_preprocess_tiny(dataset_id)
    return raw


@pytest.fixture(scope="module")
def region_dataset(planned_dataset):
    env = dict(planned_dataset["env"])
    raw = make_region_dataset(env, REGION_ID, "TinyRegions")
    pre = os.path.join(env["nnUNet_preprocessed"], os.path.basename(raw))
    return {"env": env, "raw": raw, "name": os.path.basename(raw), "pre": pre}


def _label_manager(pre):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    dj = json.load(open(os.path.join(pre, "dataset.json")))
    return PlansManager(os.path.join(pre, f"{PLANS}.json")).get_label_manager(dj), dj


def _trainer(pre):
    from nnunetv2.utilities.file_path_utilities import load_json
    import nnunet_prompt_trainers.PromptTrainer as module
    return getattr(module, TRAINER)(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=False), CONFIG, 0,
                                    load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))


def test_region_targets_and_training_view(region_dataset):
    """Prompts address regions by name; training turns the label-map target into 'one region vs rest'."""
    from nnunet_prompt.prompts.model import Prompt, PromptError
    from nnunet_prompt.prompts.regions_or_labels import prompt_targets
    dj = json.load(open(os.path.join(region_dataset["raw"], "dataset.json")))
    assert dj["labels"] == EXPECTED_LABELS and dj["regions_class_order"] == [1, 2]
    targets = prompt_targets(dj)
    assert targets == {"CTV": (1, 2), "GTV": (2,)}
    assert Prompt(label="GTV", positive_points=[(1, 1, 1)]).resolve_label(targets) == (2,)
    with pytest.raises(PromptError, match="region"):
        Prompt(label=2, positive_points=[(1, 1, 1)]).resolve_label(targets)

    trainer = _trainer(region_dataset["pre"])
    assert trainer.target_labels == targets
    # nnU-Net's data pipeline gives the prompt trainer label maps (no region channels) and its label loss
    assert not trainer.label_manager.has_regions and trainer.label_manager.all_labels == [0, 1, 2]
    full = torch.zeros((2, 1, 4, 4, 4), dtype=torch.int16)
    full[:, :, :2] = 1
    full[:, :, :1] = 2
    half = full[:, :, ::2, ::2, ::2]
    for _ in range(6):
        out = trainer.select_targets([full, half])
        for t, o in zip((full, half), out):
            assert o.shape == t.shape and set(torch.unique(o).tolist()) <= {0, 1}
            for i in range(2):
                ctv, gtv = torch.isin(t[i], torch.tensor([1, 2])), t[i] == 2
                assert torch.equal(o[i].bool(), ctv) or torch.equal(o[i].bool(), gtv)
    only_ctv = torch.where(full == 2, torch.ones_like(full), full)
    assert torch.equal(trainer.select_targets([only_ctv])[0].bool(), only_ctv > 0)  # the one region present


def test_oracle_object_logits_export_to_the_reference_regions(region_dataset, tmp_path):
    """Perfect per-region object logits, combined as the predictor combines them and exported by nnU-Net's region
    export (sigmoid, regions_class_order), give back the reference: Dice 1 for every region in nnU-Net's evaluation."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_prompt.prompts.regions_or_labels import logit_channel, prompt_targets, target_mask, unprompted_logits
    pre = region_dataset["pre"]
    lm, dj = _label_manager(pre)
    pm = PlansManager(os.path.join(pre, f"{PLANS}.json"))
    cm = pm.get_configuration(CONFIG)
    folder = os.path.join(pre, cm.data_identifier)
    ds = infer_dataset_class(folder)(folder)
    for k in ds.identifiers:
        data, seg, _, props = ds.load_case(k)
        seg = np.asarray(seg[:])[0]
        out = unprompted_logits(lm, seg.shape)
        assert out.shape[0] == 2  # one channel per region, no background channel
        for key in prompt_targets(dj).values():
            mask = target_mask(seg, key)
            if mask.any():
                out[logit_channel(lm, key)] = torch.from_numpy(np.where(mask, 10.0, -10.0))
        export_prediction_from_logits(out, props, cm, pm, dj, str(tmp_path / k), False)
    m = compute_metrics_on_folder(os.path.join(pre, "gt_segmentations"), str(tmp_path), None, pm.image_reader_writer_class(),
                                  ".nii.gz", lm.foreground_regions, lm.ignore_label, num_processes=1)
    assert set(m["mean"]) == {(1, 2), (2,)}
    for r in m["metric_per_case"]:
        for region, v in r["metrics"].items():
            assert v["FP"] == 0 and v["FN"] == 0, (r["reference_file"], region, v)


def test_prompt_trainer_final_validation_is_evaluated_on_regions(region_dataset):
    """nnUNetv2_train of a prompt trainer on a --overlap regions dataset: the final validation prompts each region
    present in the reference and writes nnU-Net's region metrics ('(1, 2)', '(2,)'), equal to what nnU-Net's
    compute_metrics_on_folder gives on the exported files with the dataset's regions."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    env = dict(region_dataset["env"], NNUNET_PROMPT_DEMO_EPOCHS="1", NNUNET_PROMPT_DEMO_ITERS="2")
    proc = run([console_script("nnUNetv2_train"), str(REGION_ID), CONFIG, "0", "-tr", TRAINER, "-p", PLANS,
                "-device", "cpu"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    val = os.path.join(env["nnUNet_results"], region_dataset["name"], f"{TRAINER}__{PLANS}__{CONFIG}", "fold_0",
                       "validation")
    summary = json.load(open(os.path.join(val, "summary.json")))
    assert set(summary["mean"]) == {"(1, 2)", "(2,)"}
    gt_folder = os.path.join(region_dataset["pre"], "gt_segmentations")

    used = json.load(open(os.path.join(val, "simulated_prompts_rank0.json")))
    assert len(used) == 2
    for case, info in used.items():
        gt = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(gt_folder, case + ".nii.gz")))
        assert info["regions"] == [[1, 2], [2]] if (gt == 2).any() else info["regions"] == [[1, 2]]
        pred = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(val, case + ".nii.gz")))
        assert set(np.unique(pred).tolist()) <= {0, 1, 2}
    assert any(info["regions"] == [[1, 2]] for info in used.values())  # the case without GTV: one prompt

    lm, _ = _label_manager(region_dataset["pre"])
    again = compute_metrics_on_folder(gt_folder, val, None, SimpleITKIO(), ".nii.gz", lm.foreground_regions,
                                      lm.ignore_label, num_processes=1)
    for key, per_region in again["mean"].items():
        np.testing.assert_allclose(summary["mean"][str(key)]["Dice"], per_region["Dice"])
    for ours, theirs in zip(summary["metric_per_case"], again["metric_per_case"]):
        assert ours["prediction_file"] == theirs["prediction_file"]
        for key, v in theirs["metrics"].items():
            assert ours["metrics"][str(key)]["TP"] == v["TP"] and ours["metrics"][str(key)]["FP"] == v["FP"]
            assert ours["metrics"][str(key)]["FN"] == v["FN"]

    # prediction with prompts from a file: a prompt names its region; the logit map has the region channels
    from nnunet_prompt.interaction.user_prompts import prompt_from_label
    from nnunet_prompt.inference.predictor import UNPROMPTED_LOGIT, PromptPredictor
    from nnunet_prompt.prompts.model import Prompt
    case = sorted(used)[0]
    label_file = os.path.join(region_dataset["raw"], "labelsTr", case + ".nii.gz")
    predictor = PromptPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(os.path.dirname(os.path.dirname(val)), (0,), "checkpoint_final.pth")
    data, _, props = predictor.configuration_manager.preprocessor_class(verbose=False).run_case(
        [os.path.join(region_dataset["raw"], "imagesTr", case + "_0000.nii.gz")], None, predictor.plans_manager,
        predictor.configuration_manager, predictor.dataset_json)
    data = torch.from_numpy(data)
    predictor.set_prompts({case: [Prompt.from_dict(dict(prompt_from_label(label_file, label=1), label="CTV"))]}, "test")
    channels = predictor.prepare_case_prompts(case, data.shape[1:], props)
    assert set(channels) == {(1, 2)}
    with torch.no_grad():
        logits = predictor.predict_prompted_logits(data, channels)
    assert logits.shape == (2, *data.shape[1:]) and torch.all(logits[1] == UNPROMPTED_LOGIT)
    assert not torch.all(logits[0] == UNPROMPTED_LOGIT)


def test_pool_export_writes_the_files_of_a_sequential_export(trained, tmp_path, monkeypatch):
    """The label dataset's final validation run in this process (PromptTrainer_demo's checkpoint): the files nnU-Net's
    export pool writes equal those of exporting the same logits one case at a time in this process."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunet_prompt.inference.predictor import PromptPredictor
    from nnunet_prompt.training.prompted_validation import run_prompted_validation
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    pre = os.path.join(trained["env"]["nnUNet_preprocessed"], trained["name"])
    trainer = _trainer(pre)
    trainer.initialize()
    trainer.load_checkpoint(os.path.join(trained["folder"], "fold_0", "checkpoint_final.pth"))
    trainer.output_folder = str(tmp_path / "pool")
    trainer.log_file = str(tmp_path / "log.txt")
    logits = []
    original = PromptPredictor.predict_prompted_logits

    def recording(self, data, channels):
        out = original(self, data, channels)
        logits.append(out.clone())
        return out

    monkeypatch.setattr(PromptPredictor, "predict_prompted_logits", recording)
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    run_prompted_validation(trainer)
    val = tmp_path / "pool" / "validation"
    used = json.load(open(val / "simulated_prompts_rank0.json"))
    assert len(logits) == len(used) > 0
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, list(used))
    seq = tmp_path / "sequential"
    seq.mkdir()
    for case, out in zip(used, logits):  # validate_cases predicts (and records) the cases in this order
        props = dataset.load_case(case)[3]
        export_prediction_from_logits(out.float().cpu().numpy(), props, trainer.configuration_manager,
                                      trainer.plans_manager, trainer.dataset_json, str(seq / case), False)
        a, b = (sitk.ReadImage(str(f / (case + ".nii.gz"))) for f in (val, seq))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
    summary = json.load(open(val / "summary.json"))
    assert set(summary["mean"]) == {"1"}

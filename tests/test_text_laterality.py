"""Laterality through nnU-Net's own pipeline, with patches narrower than half the body and notes in ten wordings.

Phantoms 96 voxels wide (two look-alike lesions, one per side; the clinical note says which is the tumour),
``NarrowSmallPatchPlanner`` plans (the patch is about a third of the image per axis, at most half the body's width),
`nnUNetv2_train TextPromptTrainer_demo` with the default text model (MiniLM-L6, frozen) for 15 x 60 iterations, then
`nnunet-prompt text-analysis --perturb laterality` on the held-out cases: each predicted with its own note and with
left and right swapped. The prediction must lie on the side the note names and move when the note's sides are
swapped.

Without positional information the same model must not follow the swap: predicted again with the position channels
set to 0 (so no tile knows where it lies in the image), swapping the sides may not move the tumour. The ablation
trained without whole-image position is in tests/test_position_maps_behaviour.py and benchmarks/text_laterality.py.
"""
import json
import os

import numpy as np
import pytest
import torch

from conftest import CONFIG, console_script, nnunet_env, run

DATASET_ID, TRAINER, PLANS = 985, "TextPromptTrainer_demo", "nnUNetPlansNarrowSmallPatch"
NUM_TRAINING, NUM_TEST, SHAPE_XYZ = 60, 12, (96, 48, 24)


@pytest.fixture(scope="module")
def trained_wide(tmp_path_factory):
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    env = nnunet_env(tmp_path_factory.mktemp("laterality"))
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[k], exist_ok=True)
    raw = generate_synthetic_hn_dataset(env["nnUNet_raw"], DATASET_ID, "WideTextHN", NUM_TRAINING, NUM_TEST,
                                        shape_xyz=SHAPE_XYZ, spacing_xyz=(2.5, 2.5, 3.0), wording="varied")
    proc = run([console_script("nnunet-prompt"), "plan", str(DATASET_ID), "-pl", "NarrowSmallPatchPlanner",
                "-c", CONFIG, "-np", "1", "-npfp", "1"],
               dict(env, nnUNet_n_proc_DA="1"))  # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA)
    assert proc.returncode == 0, proc.stdout[-5000:]
    with open(os.path.join(env["nnUNet_preprocessed"], os.path.basename(raw), PLANS + ".json")) as f:
        patch = json.load(f)["configurations"][CONFIG]["patch_size"]
    env = dict(env, NNUNET_PROMPT_DEMO_EPOCHS="15", NNUNET_PROMPT_DEMO_ITERS="60",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", env["OMP_NUM_THREADS"]))
    proc = run([console_script("nnUNetv2_train"), str(DATASET_ID), CONFIG, "0", "-tr", TRAINER, "-p", PLANS,
                "-device", "cpu"], env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:]
    from nnunet_prompt.clinical_text import read_sidecar
    return {"env": env, "raw": raw, "patch": patch, "named": {c: e["fields"]["laterality"]
                                                             for c, e in read_sidecar(raw).items()}}


def _side(left_share):
    return None if left_share is None or np.isnan(left_share) else "left" if left_share > 0.5 else "right"


def _moved(sides: dict) -> int:
    return sum(own == named and swapped not in (None, named) for named, own, swapped in sides.values())


def test_the_planned_patch_is_at_most_half_the_body_wide(trained_wide):
    import SimpleITK as sitk
    folder = os.path.join(trained_wide["raw"], "imagesTr")
    widths = []
    for f in sorted(os.listdir(folder)):
        body = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, f))) > -500  # soft tissue and bone, not air
        x = np.flatnonzero(body.any((0, 1)))
        widths.append(x[-1] - x[0] + 1)
    assert trained_wide["patch"][-1] <= 0.5 * min(widths)  # x (z y x order), the patient's left-right axis


def test_swapping_left_and_right_in_the_note_moves_the_prediction(trained_wide, tmp_path):
    raw, env = trained_wide["raw"], trained_wide["env"]
    out = tmp_path / "analysis"
    proc = run([console_script("nnunet-prompt"), "text-analysis", "-i", os.path.join(raw, "imagesTs"),
                "-l", os.path.join(raw, "labelsTs"), "--clinical-text", os.path.join(raw, "clinical_text.json"),
                "--perturb", "laterality", "-o", str(out), "-d", str(DATASET_ID), "-c", CONFIG, "-f", "0",
                "-tr", TRAINER, "-p", PLANS, "-device", "cpu"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    with open(out / "text_analysis.json") as f:
        analysis = json.load(f)["cases"]
    sides = {c: (trained_wide["named"][c], _side(a["labels"]["tumour"]["left_share_own"]),
                 _side(a["labels"]["tumour"]["left_share_perturbed"])) for c, a in analysis.items()}
    named = sum(own == n for n, own, _ in sides.values())
    assert {n for n, _, _ in sides.values()} == {"left", "right"}  # both directions are tested
    # below the benchmark's 90 % (benchmarks/text_laterality.py, RESULTS.md: 16 of 16): one short training whose seed
    # varies, and two of the held-out notes have the wording it learns last (seen: 9-10 of 12 moved; without the
    # position channels 0 of 12, the next test)
    assert named >= 2 / 3 * NUM_TEST, f"tumour on the side the note names in only {named}/{NUM_TEST}: {sides}"
    moved = _moved(sides)
    assert moved >= 2 / 3 * NUM_TEST, f"swapping the sides moved the tumour in {moved}/{NUM_TEST}: {sides}"
    for direction in ("left", "right"):
        group = {c: s for c, s in sides.items() if s[0] == direction}
        assert _moved(group) >= 0.5 * len(group), f"swap from {direction} moved {_moved(group)}/{len(group)}: {sides}"


def test_without_position_channels_the_swap_moves_nothing(trained_wide, tmp_path, monkeypatch):
    """The same model, each tile's position channels set to 0: nothing says where a tile lies in the image."""
    import SimpleITK as sitk
    import nnunet_prompt.text.image_position as image_position
    from nnunet_prompt.clinical_text import read_sidecar
    from nnunet_prompt.evaluation.text_analysis import left_share, predict_entries
    from nnunet_prompt.inference.predictor import PromptPredictor
    from nnunet_prompt.text.perturbation import swap_laterality
    raw, env = trained_wide["raw"], trained_wide["env"]
    real = image_position.tile_position
    monkeypatch.setattr(image_position, "tile_position", lambda *a, **k: np.zeros_like(real(*a, **k)))
    predictor = PromptPredictor(tile_step_size=0.5, use_mirroring=False, allow_tqdm=False, verbose=False,
                                device=torch.device("cpu"))
    predictor.initialize_from_trained_model_folder(
        os.path.join(env["nnUNet_results"], os.path.basename(raw), f"{TRAINER}__{PLANS}__{CONFIG}"), (0,))
    texts = read_sidecar(raw)
    images = os.path.join(raw, "imagesTs")
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(images))
    side = {}
    for tag, change in (("own", lambda t: t), ("swapped", swap_laterality)):
        predict_entries(predictor, images, {c: {"text": change(texts[c]["text"])} for c in cases}, tag,
                        str(tmp_path / tag))
        for c in cases:
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / tag / f"{c}.nii.gz"))) == 1
            share = left_share(mask, sitk.ReadImage(os.path.join(images, c + "_0000.nii.gz")))
            side.setdefault(c, [trained_wide["named"][c]]).append(_side(share))
    moved = _moved({c: tuple(s) for c, s in side.items()})
    assert moved <= 0.25 * NUM_TEST, f"the swap moved the tumour in {moved}/{NUM_TEST} cases without positions: {side}"

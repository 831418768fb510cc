"""Laterality from the clinical text when nnU-Net's planned patch is narrower than half the body, as on a CT.

Through the real pipeline: wide phantoms (two look-alike lesions, the text's side says which is the tumour),
``NarrowSmallPatchPlanner`` plans, `nnUNetv2_train TextPromptTrainer_demo` with the default text model (MiniLM-L6),
and `nnunet-prompt text-analysis --perturb laterality` on the held-out cases (sliding window over several patches).
The tumour must lie on the side the text names, and move when the text's side is swapped, in both directions.

A patch-relative model cannot pass: with TRAINER = "TextPromptTrainer_patchPosition_demo" (no position channels)
this test fails (benchmarks/RESULTS.md, "laterality test without position channels")."""
import json
import os

import pytest
import SimpleITK as sitk

from conftest import CONFIG, console_script, run

LATERALITY_ID = 986
PLANS_SMALL = "nnUNetPlansNarrowSmallPatch"
TRAINER = "TextPromptTrainer_demo"
SHAPE_XYZ = (64, 32, 16)


def body_width_voxels(image_file: str) -> int:
    """Widest left-right extent of the body (soft tissue and denser) over the image's rows."""
    a = sitk.GetArrayFromImage(sitk.ReadImage(image_file)) > -500
    return int(a.sum(axis=2).max())


@pytest.fixture(scope="module")
def laterality_model(planned_dataset):
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunet_prompt_planners.narrow_planner import NarrowSmallPatchPlanner
    env = planned_dataset["env"]
    raw = generate_synthetic_hn_dataset(env["nnUNet_raw"], LATERALITY_ID, "TinyLaterality", num_training=16,
                                        num_test=8, shape_xyz=SHAPE_XYZ, spacing_xyz=(2.5, 2.5, 3.0))
    extract_fingerprint_dataset(LATERALITY_ID, num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
    plan_experiment_dataset(LATERALITY_ID, NarrowSmallPatchPlanner)
    preprocess_dataset(LATERALITY_ID, PLANS_SMALL, (CONFIG,), [1], show_progress_bar=False)
    name = os.path.basename(raw)
    with open(os.path.join(env["nnUNet_preprocessed"], name, PLANS_SMALL + ".json")) as f:
        patch = json.load(f)["configurations"][CONFIG]["patch_size"]
    train_env = dict(env, NNUNET_PROMPT_DEMO_EPOCHS="5", NNUNET_PROMPT_DEMO_ITERS="60")
    train_env.pop("NNUNET_PROMPT_TEXT_MODEL", None)  # the default MiniLM-L6
    proc = run([console_script("nnUNetv2_train"), str(LATERALITY_ID), CONFIG, "0", "-tr", TRAINER, "-p", PLANS_SMALL,
                "-device", "cpu"], train_env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return dict(planned_dataset, raw=raw, patch=patch, env=train_env)


def test_the_text_names_the_side_with_patches_narrower_than_half_the_body(laterality_model, tmp_path):
    raw, env = laterality_model["raw"], laterality_model["env"]
    images = os.path.join(raw, "imagesTs")
    width = min(body_width_voxels(os.path.join(images, f)) for f in os.listdir(images))
    assert laterality_model["patch"][-1] <= width / 2, (laterality_model["patch"], width)  # x is the last axis here

    out = tmp_path / "laterality"
    proc = run([console_script("nnunet-prompt"), "text-analysis", "-i", images, "-l", os.path.join(raw, "labelsTs"),
                "-o", str(out), "--clinical-text", os.path.join(raw, "clinical_text.json"), "--perturb", "laterality",
                "-d", str(LATERALITY_ID), "-tr", TRAINER, "-p", PLANS_SMALL, "-f", "0", "-device", "cpu"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    with open(out / "text_analysis.json") as f:
        cases = json.load(f)["cases"]
    with open(os.path.join(raw, "clinical_text.json")) as f:
        named = {c: e["fields"]["laterality"] for c, e in json.load(f)["cases"].items()}
    by_direction = {"left": [0, 0], "right": [0, 0]}  # own text's side: [cases, on that side and moved when swapped]
    on_named_side = 0
    for case, result in cases.items():
        r = result["labels"]["tumour"]
        own, swapped = (None if share is None else "left" if share > 0.5 else "right"  # None: nothing predicted
                        for share in (r["left_share_own"], r["left_share_perturbed"]))
        side = named[case]
        on_named_side += own == side
        by_direction[side][0] += 1
        by_direction[side][1] += own == side and swapped not in (None, side)
    assert on_named_side >= 7, f"tumour on the side the text names in {on_named_side} of {len(cases)} cases"
    for side, (n, moved) in by_direction.items():
        assert n and moved >= n - 1, f"text side {side}: the tumour moved when swapped in {moved} of {n} cases"

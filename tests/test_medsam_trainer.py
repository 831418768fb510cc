"""MedSAMTrainer and zero-shot MedSAM (issue 16): the plateau schedule and best-validation-loss checkpoint, the
IoU-prediction loss, and (with the MedSAM network: tiny SAM files the test builds and saves through the real saving
code) training through nnUNetv2_train, --c, prediction, zero-shot prediction."""
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunet_prompt.training.medsam_trainer import box_target_iou, iou_prediction_loss, touch_all
from nnunet_prompt.training.plateau_schedule import (BEST_VAL_LOSS_KEY, SCHEDULER_KEY, ValidationLossPlateau,
                                                     adamw_plateau)


# ------------------------------------------------------------------------------------------- IoU loss
def _boxes_out(logits, boxes, sample, iou_pred):
    return SimpleNamespace(box_logits=logits, boxes=torch.tensor(boxes), box_sample=torch.tensor(sample),
                           iou_predictions=iou_pred)


def test_box_target_iou_counts_the_target_inside_the_box_only():
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    target[0, 1:3, 1:3] = True     # object A (4 px) in box 0
    target[0, 5:7, 5:7] = True     # object B: outside box 0
    target[1, 0:4, 4:8] = True
    logits = torch.full((2, 8, 8), -1.0)
    logits[0, 1:3, 1:4] = 1.0      # 6 px predicted, 4 of them A -> IoU 4/6
    logits[1, 0:4, 4:8] = 1.0      # exact -> 1
    iou = box_target_iou(torch.tensor([0, 1]), torch.tensor([[0, 0, 3, 3], [4, 0, 7, 3]]), logits, target)
    assert torch.allclose(iou, torch.tensor([4 / 6, 1.0]))


def test_iou_loss_is_the_mse_to_the_actual_iou_and_drives_the_iou_head():
    target = torch.zeros(1, 8, 8, dtype=torch.bool)
    target[0, 2:4, 2:4] = True
    logits = torch.full((1, 8, 8), -1.0)
    logits[0, 2:4, 2:4] = 1.0
    head = torch.nn.Parameter(torch.tensor([0.25]))
    loss = iou_prediction_loss(_boxes_out(logits, [[0, 0, 7, 7]], [0], head), target)
    assert math.isclose(loss.item(), 0.75 ** 2, rel_tol=1e-6)
    loss.backward()
    assert head.grad is not None and head.grad.item() < 0  # pushed up towards IoU 1
    empty = iou_prediction_loss(_boxes_out(torch.zeros(0, 8, 8), torch.zeros(0, 4).long().tolist(), [],
                                           torch.zeros(0, requires_grad=True)), target)
    assert empty.item() == 0


def test_touch_all_gives_every_trainable_parameter_a_zero_gradient():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    net[1].bias.requires_grad_(False)
    touch_all(net).backward()
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters() if p.requires_grad)
    assert net[1].bias.grad is None


# ------------------------------------------------------------------ plateau schedule, best checkpoint
class _Logger:
    def __init__(self):
        self.values = {k: [] for k in ("epoch_end_timestamps", "epoch_start_timestamps", "train_losses",
                                       "val_losses", "dice_per_class_or_region", "lrs")}

    def log(self, key, value, epoch):
        self.values[key].append(value)

    def get_value(self, key, step):
        return self.values[key][step]

    def plot_progress_png(self, folder):
        pass


class _Base:
    def nnunet_checkpoint(self):
        return {"network_weights": {}}

    def restore_extra_state(self, checkpoint):
        pass


class _Trainer(ValidationLossPlateau, _Base):
    """ValidationLossPlateau on a stand-in trainer: records which checkpoints on_epoch_end writes."""

    def __init__(self, folder):
        self.network = torch.nn.Linear(1, 1)
        self.initial_lr, self.weight_decay = 3e-4, 0.01
        self.optimizer, self.lr_scheduler = adamw_plateau(self, 0.9, 1)
        self.logger, self.output_folder, self.local_rank = _Logger(), str(folder), 0
        self.current_epoch, self.num_epochs, self.save_every = 0, 100, 50
        self.saved = []

    def print_to_log_file(self, *args, **kwargs):
        pass

    def save_checkpoint(self, filename):
        self.saved.append((self.current_epoch, os.path.basename(filename), self.nnunet_checkpoint()))

    def epoch(self, val_loss):
        self.on_train_epoch_start()
        for k, v in (("epoch_start_timestamps", 0.0), ("train_losses", 1.0), ("val_losses", val_loss),
                     ("dice_per_class_or_region", [0.5])):
            self.logger.log(k, v, self.current_epoch)
        self.on_epoch_end()


def test_best_checkpoint_is_the_lowest_validation_loss_and_the_plateau_lowers_the_lr(tmp_path):
    t = _Trainer(tmp_path)
    for loss in (1.0, 0.8, 0.9, 0.85, 0.7, float("nan"), 0.75):
        t.epoch(loss)
    best = [(e, c[BEST_VAL_LOSS_KEY]) for e, name, c in t.saved if name == "checkpoint_best.pth"]
    assert best == [(0, 1.0), (1, 0.8), (4, 0.7)]
    assert t.best_val_loss == 0.7
    # patience 1: epochs 2 and 3 did not improve on 0.8 -> one reduction by 0.9; NaN does not step
    assert math.isclose(t.optimizer.param_groups[0]["lr"], 3e-4 * 0.9, rel_tol=1e-6)
    # on_train_epoch_start leaves the plateau scheduler alone (nnU-Net's would step it with the epoch number)
    assert t.logger.values["lrs"][:3] == [3e-4, 3e-4, 3e-4]


def test_checkpoint_round_trip_restores_the_scheduler_and_the_best_loss(tmp_path):
    t = _Trainer(tmp_path)
    for loss in (1.0, 1.1, 1.2, 1.3):
        t.epoch(loss)
    state = t.nnunet_checkpoint()
    assert state[SCHEDULER_KEY]["num_bad_epochs"] == t.lr_scheduler.num_bad_epochs
    other = _Trainer(tmp_path)
    other.restore_extra_state(state)
    assert other.lr_scheduler.state_dict() == t.lr_scheduler.state_dict() and other.best_val_loss == 1.0


# ------------------------------------------- the trainer, with a tiny SAM file the test builds and saves
PLANS, CONFIG, DATASET_ID = "nnUNetPlansSAM64", "2d", 988  # an id no other test uses


@pytest.fixture(scope="module")
def sam2d_dataset(planned_dataset):
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunet_prompt_planners.sam_planner import SAM2DPlanner64
    raw = generate_synthetic_hn_dataset(planned_dataset["env"]["nnUNet_raw"], DATASET_ID, "TinyMedSAM",
                                        num_training=6, num_test=1, shape_xyz=(40, 40, 6))
    extract_fingerprint_dataset(DATASET_ID, num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
    plan_experiment_dataset(DATASET_ID, SAM2DPlanner64)
    preprocess_dataset(DATASET_ID, PLANS, (CONFIG,), [1], show_progress_bar=False)
    return dict(planned_dataset, name=os.path.basename(raw), raw=raw)


@pytest.fixture
def tiny_sam(monkeypatch, tmp_path):
    """A tiny random SAM (image encoder, prompt encoder, mask decoder) saved as an official-format file through the
    real saving code, named as the base file of a fresh training."""
    from nnunet_prompt.sam.checkpoint import ENV_VAR
    from nnunet_prompt.sam.full_model import random_sam_model, save_sam_model_checkpoint, tiny_sam_config
    torch.manual_seed(0)
    path = str(tmp_path / "tiny_medsam.pth")
    save_sam_model_checkpoint(path, random_sam_model(tiny_sam_config(64)))
    monkeypatch.setenv(ENV_VAR, path)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return path


def _medsam_trainer(ds, name="MedSAMTrainer_demo"):
    import nnunet_prompt_trainers.MedSAMTrainer as module
    from nnunetv2.utilities.file_path_utilities import load_json
    pre = os.path.join(ds["env"]["nnUNet_preprocessed"], ds["name"])
    return getattr(module, name)(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=False),
                                 CONFIG, 0, load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))


def test_trainer_records_medsam_trains_with_the_iou_term_and_checkpoints_the_scheduler(sam2d_dataset, tiny_sam,
                                                                                      tmp_path):
    from nnunet_prompt.model_record import PLANS_KEY
    t = _medsam_trainer(sam2d_dataset)
    t.initialize()
    record = t.plans_manager.plans[PLANS_KEY]
    assert record["sam"]["kind"] == "medsam" and record["sam"]["pixel_norm"] == "unit"
    assert record["sam"]["base"]["path"] == os.path.abspath(tiny_sam)
    assert record["network"] == {"finetune": "full", "prompt_channels_used": ["box"]}
    assert type(t.lr_scheduler).__name__ == "ReduceLROnPlateau" and t.optimizer.defaults["weight_decay"] == 0.01
    assert t.simulation_policy.initial_types == ("slice_boxes",)
    dl, _ = t.get_dataloaders()
    t.network.train()
    batch = t._prompted_batch(next(dl), rounds=1)
    while not batch["target"].eq(1).any():
        batch = t._prompted_batch(next(dl), rounds=1)
    data, target = t._batch_on_device(batch)
    boxes = t.network(data, return_boxes=True)
    logits = boxes.logits
    assert boxes.iou_predictions.numel() >= 1
    losses = t.medsam_loss(logits, boxes, target)
    assert losses["iou_loss"] > 0
    assert torch.isclose(losses["loss"].detach(), losses["seg_loss"] + losses["iou_loss"])
    # the IoU head learns only through the IoU term
    t.optimizer.zero_grad()
    losses["loss"].backward()
    assert t.network.sam.mask_decoder.iou_prediction_head.proj_out.weight.grad.abs().sum() > 0
    # a step through PromptTrainerBase.train_step (prompts, then MedSAMSteps), and a checkpoint with the scheduler
    assert np.isfinite(t.train_step(next(dl))["loss"])
    # the validation loss is the soft Dice loss (negative soft Dice), as the study selects its epoch by
    assert losses["dice_loss"] < 0 and -1 <= float(t.validation_step(next(dl))["loss"]) <= 0
    t.lr_scheduler.step(1.0)
    t.lr_scheduler.step(2.0)
    t.best_val_loss = 1.0
    path = str(tmp_path / "checkpoint_latest.pth")
    t.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved[SCHEDULER_KEY]["num_bad_epochs"] == 1 and saved[BEST_VAL_LOSS_KEY] == 1.0
    assert saved["optimizer_state"]["state"]  # AdamW moments
    # --c: a new trainer restores optimizer and scheduler state from the file
    r = _medsam_trainer(sam2d_dataset)
    r.load_checkpoint(path)
    assert r.lr_scheduler.state_dict() == t.lr_scheduler.state_dict() and r.best_val_loss == 1.0
    for a, b in zip(r.optimizer.state_dict()["state"].values(), t.optimizer.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_zero_shot_predict_builds_reuses_and_rebuilds_its_model_folder_and_writes_timing(sam2d_dataset, tiny_sam,
                                                                                          tmp_path, monkeypatch,
                                                                                          capsys):
    """`nnunet-prompt predict --zero-shot` (in this process): the model folder
    MedSAMTrainer_zeroShot__PLANS__2d/fold_all, prediction from it, OUT/timing.json; same file: reused; other
    pixel normalisation: rebuilt."""
    from nnunet_prompt.cli import main
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, sam2d_dataset["env"][k])
    images = os.path.join(sam2d_dataset["raw"], "imagesTs")
    case = sorted(os.listdir(images))[0][:-len("_0000.nii.gz")]
    prompts = tmp_path / "boxes.json"
    prompts.write_text(json.dumps({case: {"boxes": [{"min": [5, 5, 1], "max": [30, 30, 1]},
                                                    {"min": [5, 5, 3], "max": [20, 20, 4]}]}}))
    args = ["predict", "-i", images, "-d", str(DATASET_ID), "-p", PLANS, "-c", CONFIG, "-tr", "MedSAMTrainer",
            "--zero-shot", "--sam-checkpoint", tiny_sam, "--prompts", str(prompts), "-device", "cpu"]
    main(args + ["-o", str(tmp_path / "out")])
    folder = os.path.join(sam2d_dataset["env"]["nnUNet_results"], sam2d_dataset["name"],
                          f"MedSAMTrainer_zeroShot__{PLANS}__{CONFIG}")
    ckpt = torch.load(os.path.join(folder, "fold_all", "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "MedSAMTrainer_zeroShot" and ckpt["inference_allowed_mirroring_axes"] is None
    record = json.load(open(os.path.join(folder, "plans.json")))["nnunet_prompt"]
    assert record["sam"]["base"]["path"] == os.path.abspath(tiny_sam) and record["sam"]["pixel_norm"] == "unit"
    assert os.path.isfile(tmp_path / "out" / f"{case}.nii.gz")
    timing = json.load(open(tmp_path / "out" / "timing.json"))
    entry = timing["cases"][case]
    assert entry["labels"] == 1 and entry["slices"] == 6 and entry["boxes"] == 3  # boxes on slices 1, 3, 4
    assert entry["seconds"] > 0 and math.isclose(entry["seconds_per_slice"], entry["seconds"] / 6, rel_tol=1e-3)
    mtime = os.path.getmtime(os.path.join(folder, "fold_all", "checkpoint_final.pth"))
    capsys.readouterr()
    main(args + ["-o", str(tmp_path / "out2")])
    assert "reusing" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(folder, "fold_all", "checkpoint_final.pth")) == mtime
    main(args + ["-o", str(tmp_path / "out3"), "--pixel-norm", "imagenet"])
    assert "rebuilding" in capsys.readouterr().err
    assert json.load(open(os.path.join(folder, "plans.json")))["nnunet_prompt"]["sam"]["pixel_norm"] == "imagenet"


# --------------------------------------------- nnUNetv2_train, --c, predict, zero-shot against SamModel itself
TRAINER = "MedSAMTrainer_demo"


@pytest.fixture(scope="module")
def medsam_trained(sam2d_dataset, tmp_path_factory):
    """MedSAMTrainer_demo trained by `nnUNetv2_train` (1 epoch of 2 iterations) from a tiny SAM file."""
    from conftest import console_script, run
    from nnunet_prompt.sam.checkpoint import ENV_VAR
    from nnunet_prompt.sam.full_model import random_sam_model, save_sam_model_checkpoint, tiny_sam_config
    torch.manual_seed(0)
    base = str(tmp_path_factory.mktemp("medsam_base") / "tiny_medsam.pth")
    save_sam_model_checkpoint(base, random_sam_model(tiny_sam_config(64)))
    env = dict(sam2d_dataset["env"], NNUNET_PROMPT_DEMO_EPOCHS="1", NNUNET_PROMPT_DEMO_ITERS="2", nnUNet_n_proc_DA="0",
               **{ENV_VAR: base})
    cmd = [console_script("nnUNetv2_train"), str(DATASET_ID), CONFIG, "0", "-tr", TRAINER, "-p", PLANS, "-device",
           "cpu"]
    proc = run(cmd, env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    folder = os.path.join(env["nnUNet_results"], sam2d_dataset["name"], f"{TRAINER}__{PLANS}__{CONFIG}")
    return dict(sam2d_dataset, env=env, cmd=cmd, folder=folder, base=base, log=proc.stdout)


def test_nnunetv2_train_fine_tunes_every_part_of_sam(medsam_trained):
    from nnunet_prompt.sam.full_model import sam_model_state_dict
    from nnunet_prompt.sam.checkpoint import read_sam_checkpoint
    fold = os.path.join(medsam_trained["folder"], "fold_0")
    assert os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    assert os.path.isfile(os.path.join(fold, "checkpoint_best.pth"))  # the lowest validation loss
    logs = [open(os.path.join(fold, f)).read() for f in os.listdir(fold) if f.startswith("training_log")]
    assert any("MedSAM network (full fine-tuning)" in log for log in logs)  # nnU-Net may start a second log file
    weights = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu",
                         weights_only=False)["network_weights"]
    base = sam_model_state_dict(read_sam_checkpoint(medsam_trained["base"]))
    changed = {k for k, v in base.items() if not torch.equal(weights["sam." + k], v)}
    # image encoder, the prompt encoder's box corners and the mask decoder moved; the point embeddings did not
    assert any(k.startswith("vision_encoder.") for k in changed)
    assert any(k.startswith("mask_decoder.") for k in changed)
    assert "prompt_encoder.point_embed.2.weight" in changed
    assert "prompt_encoder.point_embed.0.weight" not in changed


def test_resume_with_c_keeps_the_plateau_schedule(medsam_trained):
    from conftest import run
    env = dict(medsam_trained["env"], NNUNET_PROMPT_DEMO_EPOCHS="2")
    proc = run(medsam_trained["cmd"] + ["--c"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "Epoch 1" in proc.stdout and "Epoch 0" not in proc.stdout
    ckpt = torch.load(os.path.join(medsam_trained["folder"], "fold_0", "checkpoint_final.pth"), map_location="cpu",
                      weights_only=False)
    assert ckpt["current_epoch"] == 2 and ckpt[SCHEDULER_KEY]["last_epoch"] >= 1 and BEST_VAL_LOSS_KEY in ckpt


def test_predict_without_the_base_file_from_the_plans_alone(medsam_trained, tmp_path):
    """The trained model is rebuilt from its plans record: the base SAM file is gone at prediction time."""
    from conftest import console_script, run
    from nnunet_prompt.sam.checkpoint import ENV_VAR
    raw = medsam_trained["raw"]
    env = {k: v for k, v in medsam_trained["env"].items() if k != ENV_VAR}
    moved = str(tmp_path / "elsewhere.pth")
    os.rename(medsam_trained["base"], moved)
    try:
        prompts = tmp_path / "boxes.json"
        assert run([console_script("nnunet-prompt"), "boxes-from-labels", "-l", os.path.join(raw, "labelsTs"), "-d",
                    str(DATASET_ID), "-p", PLANS, "-o", str(prompts)], env).returncode == 0
        out = tmp_path / "pred"
        proc = run([console_script("nnunet-prompt"), "predict", "-i", os.path.join(raw, "imagesTs"), "-o", str(out),
                    "-d", str(DATASET_ID), "-p", PLANS, "-c", CONFIG, "-f", "0", "-tr", TRAINER, "--prompts",
                    str(prompts), "-device", "cpu"], env)
        assert proc.returncode == 0, proc.stdout[-5000:]
        assert "its weights come from the model's checkpoint" in proc.stdout
        cases = sorted(f[:-len(".nii.gz")] for f in os.listdir(os.path.join(raw, "labelsTs")))
        assert sorted(f[:-len(".nii.gz")] for f in os.listdir(out) if f.endswith(".nii.gz")) == cases
        timing = json.load(open(out / "timing.json"))["cases"]
        n_boxes = sum(len(p["boxes"]) for p in json.load(open(prompts))[cases[0]])
        assert timing[cases[0]]["boxes"] >= n_boxes > 0 and timing[cases[0]]["seconds_per_slice"] > 0
    finally:
        os.rename(moved, medsam_trained["base"])


def test_zero_shot_prediction_equals_sam_models_own_forward_on_a_slice(sam2d_dataset, tmp_path, monkeypatch):
    """`predict --zero-shot` on a 64x64 image (one tile per slice, no resampling) gives, on the boxed slice, the
    probability of transformers' SamModel itself given the windowed slice and the same box; no box: background."""
    import SimpleITK as sitk
    import torch.nn.functional as F
    from conftest import console_script, run
    from test_medsam import _informative
    from nnunet_prompt.sam.full_model import load_sam_model, random_sam_model, save_sam_model_checkpoint, \
        tiny_sam_config
    torch.manual_seed(1)
    path = str(tmp_path / "informative_sam.pth")
    save_sam_model_checkpoint(path, _informative(random_sam_model(tiny_sam_config(64))))
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 120, size=(3, 64, 64)).astype(np.float32)  # z, y, x
    hu[:, 20:40, 10:30] += 150
    images = tmp_path / "images"
    images.mkdir()
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(image, str(images / "probe_0000.nii.gz"))
    x0, y0, x1, y1 = 8, 18, 33, 43
    prompts = tmp_path / "box.json"
    prompts.write_text(json.dumps({"probe": {"boxes": [{"min": [x0, y0, 1], "max": [x1, y1, 1]}]}}))
    env = dict(sam2d_dataset["env"], nnUNet_results=str(tmp_path / "results"))
    out = tmp_path / "out"
    proc = run([console_script("nnunet-prompt"), "predict", "-i", str(images), "-o", str(out), "-d", str(DATASET_ID),
                "-p", PLANS, "-c", CONFIG, "-tr", "MedSAMTrainer", "--zero-shot", "--sam-checkpoint", path,
                "--prompts", str(prompts), "--save_probabilities", "-device", "cpu"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    probabilities = np.load(out / "probe.npz")["probabilities"][1]  # (z, y, x)

    model, _ = load_sam_model(path)
    # nnU-Net's CT normalisation clips to the dataset's foreground percentiles; then MedSAM's soft-tissue window
    # (level 40, width 400) to [0, 1], replicated to RGB
    plans = json.load(open(os.path.join(env["nnUNet_preprocessed"], sam2d_dataset["name"], f"{PLANS}.json")))
    ct = plans["foreground_intensity_properties_per_channel"]["0"]
    window = np.clip((np.clip(hu[1], ct["percentile_00_5"], ct["percentile_99_5"]) - (40 - 200)) / 400, 0, 1)
    pixels = torch.from_numpy(window)[None, None].expand(1, 3, 64, 64).float()
    with torch.no_grad():
        ref = model(pixel_values=pixels, input_boxes=torch.tensor([[[x0, y0, x1, y1]]], dtype=torch.float32),
                    multimask_output=False)
    ref = torch.sigmoid(F.interpolate(ref.pred_masks[:, 0], size=(64, 64), mode="bilinear", align_corners=False))
    ref = ref[0, 0].numpy()
    assert ref.max() - ref.min() > 0.1  # an informative reference
    error = np.abs(probabilities[1] - ref)
    # nnU-Net's sliding window accumulates Gaussian-weighted logits in half precision: exact where the weight is
    # large, a few 1e-3 in the tile's corners, where the weight is ~1e-7
    assert error[16:48, 16:48].max() < 1e-3 and error.max() < 1e-2
    assert probabilities[0].max() < 1e-3 and probabilities[2].max() < 1e-3


def test_zero_shot_trainer_writes_the_files_weights_and_validates(medsam_trained):
    """`nnUNetv2_train ... -tr MedSAMTrainer_zeroShot`: no epoch, checkpoint_final holds the base file's weights, the
    fold's prompted validation is written."""
    from conftest import console_script, run
    from nnunet_prompt.sam.checkpoint import read_sam_checkpoint
    from nnunet_prompt.sam.full_model import sam_model_state_dict
    trainer = "MedSAMTrainer_zeroShot"
    proc = run([console_script("nnUNetv2_train"), str(DATASET_ID), CONFIG, "0", "-tr", trainer, "-p", PLANS, "-device",
                "cpu"], medsam_trained["env"])
    assert proc.returncode == 0, proc.stdout[-5000:]
    fold = os.path.join(medsam_trained["env"]["nnUNet_results"], medsam_trained["name"], f"{trainer}__{PLANS}__{CONFIG}",
                        "fold_0")
    weights = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu",
                         weights_only=False)["network_weights"]
    base = sam_model_state_dict(read_sam_checkpoint(medsam_trained["base"]))
    assert all(torch.equal(weights["sam." + k], v) for k, v in base.items())
    assert os.path.isfile(os.path.join(fold, "validation", "summary.json"))

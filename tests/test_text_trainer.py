"""TextPromptTrainer through nnU-Net's own CLI: training with a small saved language model, --c, the final
validation with each case's text, and `nnunet-prompt predict` with text per case."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import CONFIG, PLANS, TEXT_TRAINER as TRAINER, console_script, run, train_text_trainer

# text_dataset (Dataset996) and text_trained: conftest.py


def _checkpoint(folder):
    return torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)


def test_training_stores_the_text_model_choice_and_only_trainable_weights(text_trained):
    folder = text_trained["folder"]
    ctx = json.load(open(os.path.join(folder, "plans.json")))["nnunet_prompt"]["clinical_context"]
    assert not os.path.exists(os.path.join(folder, "clinical_context.json"))
    assert ctx["kind"] == "language_model" and ctx["text_model"]["source"] == os.path.abspath(text_trained["tiny_bert"])
    ckpt = _checkpoint(folder)
    keys = set(ckpt["network_weights"])
    assert {"context_encoder.prompt_vectors", "context_encoder.seg_embedding"} <= keys
    levels = len(ckpt["init_args"]["plans"]["configurations"][CONFIG]["architecture"]["arch_kwargs"]["features_per_stage"])
    assert {k.split(".")[1] for k in keys if k.startswith("fusions.")} == {str(i) for i in range(levels)}
    assert not any("word_embeddings" in k or "encoder.layer." in k for k in keys), "language model weights in checkpoint"
    # laterality is in the text: no mirroring in training or at inference
    assert ckpt["inference_allowed_mirroring_axes"] is None


def test_final_validation_uses_each_cases_text(text_trained):
    val = os.path.join(text_trained["folder"], "fold_0", "validation")
    assert "foreground_mean" in json.load(open(os.path.join(val, "summary.json")))
    used = json.load(open(os.path.join(val, "clinical_text_rank0.json")))
    sidecar = json.load(open(os.path.join(text_trained["raw"], "clinical_text.json")))["cases"]
    assert used and all(used[c]["text"] == sidecar[c]["text"] for c in used)


def test_resume_with_c(text_trained):
    env = dict(text_trained["train_env"], NNUNET_PROMPT_DEMO_EPOCHS="2")
    proc = run(text_trained["cmd"] + ["--c"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    ckpt = _checkpoint(text_trained["folder"])
    assert ckpt["current_epoch"] == 2 and "Epoch 0" not in proc.stdout


def _predict(ds, out, prompts_file=None, extra=(), trainer=TRAINER):
    env = {k: v for k, v in ds["env"].items() if k != "NNUNET_PROMPT_TEXT_MODEL"}  # the stored choice is used
    cmd = [console_script("nnunet-prompt"), "predict", "-i", os.path.join(ds["raw"], "imagesTs"), "-o", str(out),
           "-d", str(ds["id"]), "-c", CONFIG, "-f", "0", "-tr", trainer, "-p", PLANS, "-device", "cpu", *extra]
    if prompts_file:
        cmd += ["--prompts", str(prompts_file)]
    return run(cmd, env)


def _swap_side(text):
    return text.replace("Left", "@").replace("Right", "Left").replace("@", "Right")


def test_predict_with_text_per_case(text_trained, tmp_path):
    ds = text_trained
    sidecar = json.load(open(os.path.join(ds["raw"], "clinical_text.json")))["cases"]
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(ds["raw"], "imagesTs")))
    probs = {}
    for name, change in (("as_written", lambda t: t), ("swapped", _swap_side)):
        pf = tmp_path / f"{name}.json"
        json.dump({c: {"text": change(sidecar[c]["text"])} for c in cases}, open(pf, "w"))
        proc = _predict(ds, tmp_path / name, pf, ["--save_probabilities"])
        assert proc.returncode == 0, proc.stdout[-5000:]
        probs[name] = {c: np.load(tmp_path / name / f"{c}.npz")["probabilities"] for c in cases}
    for c in cases:
        img = sitk.ReadImage(os.path.join(ds["raw"], "imagesTs", f"{c}_0000.nii.gz"))
        seg = sitk.ReadImage(str(tmp_path / "as_written" / f"{c}.nii.gz"))
        assert seg.GetSize() == img.GetSize() and np.allclose(seg.GetOrigin(), img.GetOrigin())
        assert np.allclose(seg.GetSpacing(), img.GetSpacing())
        assert probs["as_written"][c].shape[0] == 3  # background, tumour, node
        assert not np.allclose(probs["as_written"][c], probs["swapped"][c]), "the text does not reach the output"


def test_predict_refuses_a_case_without_text(text_trained, tmp_path):
    ds = text_trained
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(ds["raw"], "imagesTs")))
    pf = tmp_path / "partial.json"
    json.dump({cases[0]: {"text": "Left-sided tumour, cT1N0M0."},
               cases[1]: {"positive_points": [[3, 3, 3]]}}, open(pf, "w"))
    proc = _predict(ds, tmp_path / "out", pf)
    assert proc.returncode == 2
    assert f"Case '{cases[1]}' has no clinical text" in proc.stdout and str(pf) in proc.stdout
    assert not os.path.isdir(tmp_path / "out") or not os.listdir(tmp_path / "out")


def test_training_refuses_a_case_without_text(text_dataset, tmp_path):
    """Checked before the first step: the message names the case, the sidecar and the opt-in variant."""
    from nnunet_prompt.clinical_text import read_sidecar, write_sidecar
    from nnunet_prompt_trainers.TextPromptTrainer import TextPromptTrainer_demo
    from nnunet_prompt.training.text_trainer import ClinicalTextError
    from nnunetv2.utilities.file_path_utilities import load_json
    pre = os.path.join(text_dataset["env"]["nnUNet_preprocessed"], text_dataset["name"])
    trainer = TextPromptTrainer_demo(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=False), CONFIG, 0,
                                     load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))
    entries = read_sidecar(text_dataset["raw"])
    entries.pop("hn_003")
    trainer._entries, trainer._sidecar_path = entries, "/data/clinical_text.json"
    with pytest.raises(ClinicalTextError, match=r"Case 'hn_003' has no entry .*/data/clinical_text.json.*allowMissingText"):
        trainer.entry("hn_003")
    trainer.allow_missing_text = True
    assert trainer.entry("hn_003")["text"] == ""


def test_numeric_category_ablation_trains_and_predicts_from_a_sidecar(text_dataset, tmp_path):
    proc, _, env = train_text_trainer(text_dataset, "TextPromptTrainer_categories_demo", {})
    assert proc.returncode == 0, proc.stdout[-5000:]
    folder = os.path.join(env["nnUNet_results"], text_dataset["name"], f"TextPromptTrainer_categories_demo__{PLANS}__{CONFIG}")
    assert json.load(open(os.path.join(folder, "plans.json")))["nnunet_prompt"]["clinical_context"]["kind"] == "categories"
    sidecar = os.path.join(text_dataset["raw"], "clinical_text.json")
    proc = _predict(text_dataset, tmp_path / "cat", extra=["--clinical-text", sidecar],
                    trainer="TextPromptTrainer_categories_demo")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert len([f for f in os.listdir(tmp_path / "cat") if f.endswith(".nii.gz")]) == 2


def test_interactive_session_takes_text(text_trained):
    from nnunet_prompt.inference.session import InteractiveSession
    ds = text_trained
    case = sorted(f for f in os.listdir(os.path.join(ds["raw"], "imagesTs")))[0]
    s = InteractiveSession(ds["folder"], fold=0, device="cpu")
    assert s.takes_text
    s.set_image(os.path.join(ds["raw"], "imagesTs", case))
    img = sitk.ReadImage(os.path.join(ds["raw"], "imagesTs", case))
    first = s.set_text("Left-sided tumour, cT2N1M0.")
    assert first.shape == sitk.GetArrayFromImage(img).shape and first.dtype == np.uint8
    logits_left = s._text_logits.clone()
    s.set_text("Right-sided tumour, cT2N0M0.")
    assert not torch.allclose(logits_left, s._text_logits)
    assert np.array_equal(s.undo(), first)
    with pytest.raises(ValueError, match="set_text"):
        s.add_point((5, 5, 5))


# ----------------------------------------------------------------------------- DDP, resume (issue 15)
def _text_trainer(text_dataset, name):
    from nnunetv2.utilities.file_path_utilities import load_json
    import nnunet_prompt_trainers.TextPromptTrainer as module
    pre = os.path.join(text_dataset["env"]["nnUNet_preprocessed"], text_dataset["name"])
    return getattr(module, name)(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=False), CONFIG,
                                 0, load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))


@pytest.mark.parametrize("name", ["TextPromptTrainer", "TextPromptTrainer_categories", "TextPromptTrainer_1group"])
def test_every_trainable_parameter_gets_a_gradient_on_one_ddp_rank(text_dataset, tiny_bert, monkeypatch, name):
    """One rank's step of `-num_gpus 2` (one case, nnU-Net's DDP loss weights; ddp_harness.as_one_rank_of_two)
    through the trainer's train_step: prompt vectors, [SEG], fusions and U-Net all get a gradient (DDP runs
    without find_unused_parameters)."""
    from ddp_harness import as_one_rank_of_two, parameters_without_gradient
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("NNUNET_PROMPT_TEXT_MODEL", tiny_bert)
    trainer = _text_trainer(text_dataset, name)
    trainer.initialize()
    as_one_rank_of_two(trainer)
    dl_train, _ = trainer.get_dataloaders()
    trainer.network.train()
    for _ in range(2):
        batch = next(dl_train)
        assert batch["data"].shape[0] == 1
        assert np.isfinite(trainer.train_step(batch)["loss"])
        missing = parameters_without_gradient(trainer.network)
        assert not missing, missing


def test_standardization_statistics_are_checkpointed_and_restored(text_dataset, tiny_bert, monkeypatch, tmp_path):
    """The running statistics are buffers: a checkpoint holds them and load_checkpoint (what --c does) restores them,
    so on_train_start does not calibrate again (it does only while num_updates == 0)."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("NNUNET_PROMPT_TEXT_MODEL", tiny_bert)
    trainer = _text_trainer(text_dataset, TRAINER)
    trainer.initialize()
    encoder = trainer.network.context_encoder
    tr_keys, _ = trainer.do_split()
    encoder.calibrate(sorted({trainer.entry(k)["text"] for k in tr_keys}))
    dl_train, _ = trainer.get_dataloaders()
    trainer.network.train()
    trainer.train_step(next(dl_train))  # a batch of 2: one running update
    saved = {k: v.clone() for k, v in encoder.standardize.state_dict().items()}
    assert int(saved["num_updates"]) == 2
    path = str(tmp_path / "checkpoint_latest.pth")
    trainer.save_checkpoint(path)
    weights = torch.load(path, weights_only=False)["network_weights"]
    assert all(torch.equal(weights[f"context_encoder.standardize.{k}"], v) for k, v in saved.items())
    resumed = _text_trainer(text_dataset, TRAINER)
    resumed.load_checkpoint(path)
    got = resumed.network.context_encoder.standardize.state_dict()
    assert all(torch.equal(got[k], v) for k, v in saved.items())

"""SAMLoRATrainer (issue 7): tiny SAM ViT encoders that the tests build and save as official-format checkpoint
files, loaded through the real loading code (nnunet_prompt.sam.checkpoint); real peft, transformers and nnU-Net."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import console_script, run
from nnunet_prompt.prompts.encoding import BOX, MASK, POS
from nnunet_prompt.sam.checkpoint import (ENV_VAR, SAMBaseReference, random_sam_image_encoder, sam_vision_config,
                                          save_sam_checkpoint)
from nnunet_prompt.sam.lora import STAGE1, STAGE2, SplitQKV
from nnunet_prompt.sam.model_info import SAMModelInfo
from nnunet_prompt.sam.network import SAMNetworkOptions, build_sam_network

PLANS = "nnUNetPlansSAM64"
CONFIG = "2d"
ONE_LABEL_ID, TWO_LABEL_ID = 997, 998
CT_PROPS = {"0": {"mean": 40.0, "std": 60.0}}


def tiny_config(image_size=64):
    return sam_vision_config("vit_b", image_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             global_attn_indexes=[1], window_size=2, output_channels=32, mlp_dim=64)


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    """A tiny SAM checkpoint pretrained at 128 px (8x8 tokens), with random non-zero position tables."""
    torch.manual_seed(0)
    enc = random_sam_image_encoder(tiny_config(128))
    with torch.no_grad():
        enc.pos_embed.normal_(std=0.1)
        for layer in enc.layers:
            layer.attn.rel_pos_h.normal_(std=0.1)
            layer.attn.rel_pos_w.normal_(std=0.1)
    path = str(tmp_path_factory.mktemp("sam") / "sam_tiny.pth")
    save_sam_checkpoint(path, enc)
    return path


def _net(sam_file, prompts=0, **options):
    info = SAMModelInfo(SAMBaseReference.from_file(sam_file))
    return build_sam_network(info, 64, 3, ["CTNormalization"], CT_PROPS, prompts, SAMNetworkOptions(**options))


# ------------------------------------------------------------------------------------------ network
def test_lora_sits_on_query_and_value_only_and_the_split_keeps_the_output(sam_file):
    net = _net(sam_file)
    for layer in net.encoder.layers:
        qkv = layer.attn.qkv
        assert isinstance(qkv, SplitQKV)
        assert hasattr(qkv.query, "lora_A") and hasattr(qkv.value, "lora_A")
        assert isinstance(qkv.key, torch.nn.Linear) and not hasattr(qkv.key, "lora_A")
    lora = [n for n, _ in net.named_parameters() if ".lora_" in n]
    assert lora and all(".qkv.query." in n or ".qkv.value." in n for n in lora)
    assert {p.shape[0] for n, p in net.named_parameters() if ".lora_A." in n} == {4}  # rank 4
    # the split layer computes exactly what the fused one did
    from nnunet_prompt.sam.checkpoint import load_sam_image_encoder
    fused, _ = load_sam_image_encoder(sam_file, 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fused(x).last_hidden_state, net._encode(x, None), atol=1e-5)


def test_position_tables_are_interpolated_to_the_planned_size(sam_file):
    from nnunet_prompt.sam.checkpoint import image_encoder_state_dict, read_sam_checkpoint
    saved = image_encoder_state_dict(read_sam_checkpoint(sam_file))
    net = _net(sam_file)
    assert saved["pos_embed"].shape[1:3] == (8, 8)
    assert net.encoder.pos_embed.shape[1:3] == (4, 4)
    assert net.encoder.layers[1].attn.rel_pos_h.shape[0] == 2 * 4 - 1  # global layer: whole 4x4 grid
    assert net.encoder.layers[0].attn.rel_pos_h.shape == saved["layers.0.attn.rel_pos_h"].shape  # windowed
    assert net.encoder.pos_embed.abs().sum() > 0


def test_training_steps_change_lora_and_decoder_and_nothing_frozen(sam_file):
    torch.manual_seed(0)
    net = _net(sam_file, prompts=4, garpa=True, provicma=True)
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    keys = {n: p.detach().clone() for n, p in net.named_parameters() if ".qkv.key." in n}
    trainable = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    assert all(not n.startswith("encoder.") or ".lora_" in n for n in trainable)
    assert any(n.startswith("decoder.") for n in trainable) and keys and frozen
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(2, 5, 64, 64)
    x[:, 1:] = (x[:, 1:] > 1).float()
    y = torch.randint(0, 3, (2, 64, 64))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    params = dict(net.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(torch.equal(params[n], v) for n, v in keys.items())
    changed = {n for n, v in trainable.items() if not torch.equal(params[n], v)}
    assert any(".lora_A." in n for n in changed) and any(".lora_B." in n for n in changed)
    assert any(n.startswith("decoder.") for n in changed)
    # GaRPA's gates learn (encoder gates start at 0, so the prompt path is driven by their gradient)
    assert {"encoder_gates", "decoder_gate"} <= changed
    assert any(n.startswith("provicma.") for n in changed) and any(n.startswith("prompt_encoder.") for n in changed)


def test_prompts_change_the_output_only_when_the_network_takes_them(sam_file):
    torch.manual_seed(0)
    for options in ({}, {"garpa": True}, {"provicma": True}):
        net = _net(sam_file, prompts=4, **options).eval()
        x = torch.randn(1, 5, 64, 64)
        x[:, 1:] = 0
        y = x.clone()
        y[:, 1 + BOX, 10:30, 10:30] = 1
        with torch.no_grad():
            assert not torch.allclose(net(x), net(y))


def test_small_state_dict_and_loading_it_into_a_fresh_build(sam_file):
    net = _net(sam_file, prompts=4, garpa=True)
    sd = net.state_dict()
    assert not any(k.startswith("encoder.") and ".lora_" not in k for k in sd)
    assert set(sd) >= {n for n, p in net.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in net.named_parameters():
            if p.requires_grad:
                p.add_(0.1)
    other = _net(sam_file, prompts=4, garpa=True)
    other.load_state_dict(net.state_dict())
    x = torch.randn(1, 5, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), other.eval()(x), atol=1e-5)
    with pytest.raises(RuntimeError, match="missing"):
        other.load_state_dict({k: v for k, v in sd.items() if not k.startswith("decoder.")})


def test_seqlora_weights_two_adapters_and_freezes_the_first(sam_file):
    net = _net(sam_file, seqlora=True)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert {"seqlora.alpha", "seqlora.beta"} <= trainable
    assert not any(f".{STAGE1}." in n for n in trainable) and any(f".lora_A.{STAGE2}." in n for n in trainable)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if f".lora_B.{STAGE1}." in n:
                p.normal_(std=0.5)  # a trained stage-1 adapter
        base = net(x)
        net.seqlora.alpha.fill_(0.0)
        assert not torch.allclose(base, net(x), atol=1e-4)  # alpha weights the stage-1 adapter


def test_intensity_mapping_ct_window_and_rgb():
    from nnunet_prompt.sam.intensity import SAMInputAdapter
    ct = SAMInputAdapter(["CTNormalization"], {"0": {"mean": 40.0, "std": 100.0}}, "unit")
    hu = torch.tensor([-160.0, 40.0, 240.0, 1000.0]).view(1, 1, 1, 4)
    out = ct((hu - 40.0) / 100.0)
    assert out.shape == (1, 3, 1, 4)
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.0]), atol=1e-6)
    rgb = SAMInputAdapter(["RGBTo0_1Normalization"] * 3, {}, "imagenet")
    x = torch.rand(1, 3, 2, 2)
    assert torch.allclose(rgb(x), (x * 255 - torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1))
                          / torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1), atol=1e-4)
    with pytest.raises(ValueError, match="rgb-fusion"):
        SAMInputAdapter(["CTNormalization", "zscore"], CT_PROPS)


# ------------------------------------------------------------------------------- through nnU-Net
@pytest.fixture(scope="module")
def sam_datasets(planned_dataset, sam_file):
    """Dataset997 (one label) and Dataset998 (two labels) beside the session's Dataset991, planned by
    SAM2DPlanner64 (64 px square 2d patch) and preprocessed (2d) through nnU-Net's API."""
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunet_prompt_planners.sam_planner import SAM2DPlanner64
    env = planned_dataset["env"]
    names = {}
    for did, name, kw in ((ONE_LABEL_ID, "TinySAM", {}), (TWO_LABEL_ID, "TinySAM2", {"label_lookalikes": True})):
        raw = generate_synthetic_hn_dataset(env["nnUNet_raw"], did, name, num_training=6, num_test=1,
                                            shape_xyz=(40, 40, 8), **kw)
        extract_fingerprint_dataset(did, num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
        _, plans_name = plan_experiment_dataset(did, SAM2DPlanner64)
        assert plans_name == PLANS
        preprocess_dataset(did, PLANS, (CONFIG,), [1], show_progress_bar=False)
        names[did] = os.path.basename(raw)
    return {"env": env, "names": names, "sam_file": sam_file}


def _load_plans(env, name):
    from nnunetv2.utilities.file_path_utilities import load_json
    pre = os.path.join(env["nnUNet_preprocessed"], name)
    return load_json(os.path.join(pre, f"{PLANS}.json")), load_json(os.path.join(pre, "dataset.json"))


def _trainer(sam_datasets, did, cls_name):
    import nnunet_prompt_trainers.SAMLoRATrainer as module
    plans, dataset_json = _load_plans(sam_datasets["env"], sam_datasets["names"][did])
    return getattr(module, cls_name)(dict(plans, continue_training=False), CONFIG, 0, dataset_json,
                                     torch.device("cpu"))


def test_planner_gives_a_square_2d_patch_and_keeps_nnunets_unet_plan(sam_datasets):
    plans, _ = _load_plans(sam_datasets["env"], sam_datasets["names"][ONE_LABEL_ID])
    cfg = plans["configurations"][CONFIG]
    assert cfg["patch_size"] == [64, 64] and cfg["batch_size"] == 2
    assert cfg["data_identifier"] == "nnUNetPlans_2d"
    assert cfg["architecture"]["network_class_name"].endswith("PlainConvUNet")  # the baseline's U-Net


def test_training_refuses_without_a_checkpoint_unless_random_init(sam_datasets, monkeypatch):
    from nnunet_prompt.sam.checkpoint import SAMCheckpointError
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(SAMCheckpointError, match=f"{ENV_VAR}.*randomInit"):
        _trainer(sam_datasets, TWO_LABEL_ID, "SAMLoRATrainer").initialize()
    monkeypatch.setenv("NNUNET_PROMPT_SAM_RANDOM_VARIANT", "vit_b")
    t = _trainer(sam_datasets, TWO_LABEL_ID, "SAMLoRATrainer_randomInit")
    t.initialize()
    assert t.network.store_frozen and any(k.startswith("encoder.layers.0.mlp") for k in t.network.state_dict())


def _steps(trainer, n):
    dl, _ = trainer.get_dataloaders()
    trainer.network.train()
    return [trainer.train_step(next(dl))["loss"] for _ in range(n)]


def test_k_class_training_through_nnunet_and_seqlora_hand_over(sam_datasets, monkeypatch, tmp_path):
    """Stage 1: SAMLoRATrainer on the two-label dataset (3 classes, no deep supervision) through nnU-Net's
    train_step; stage 2: SAMLoRATrainer_SeqLoRA (prompted, 2 outputs) on the one-label dataset takes its LoRA
    (frozen) and the matching decoder layers; then only stage 2's weights move."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv(ENV_VAR, sam_datasets["sam_file"])
    s1 = _trainer(sam_datasets, TWO_LABEL_ID, "SAMLoRATrainer")
    s1.initialize()
    assert not s1.enable_deep_supervision and s1.network.decoder[-1].out_channels == 3
    assert type(s1.loss).__name__ != "DeepSupervisionWrapper"
    # the base reference travels in the plans record (plans.json beside the model): rebuilding needs no variable
    from nnunet_prompt.model_record import PLANS_KEY
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    assert s1.plans_manager.plans[PLANS_KEY]["sam"]["base"]["path"] == os.path.abspath(sam_datasets["sam_file"])
    with monkeypatch.context() as m:
        m.delenv(ENV_VAR)
        pm = PlansManager(dict(s1.plans_manager.plans))
        rebuilt = type(s1).build_network_architecture(pm, pm.get_configuration(CONFIG), 1, 3, False)
        assert torch.equal(rebuilt.encoder.patch_embed.projection.weight,
                           s1.network.encoder.patch_embed.projection.weight)
    assert all(np.isfinite(_steps(s1, 2)))
    ckpt = str(tmp_path / "stage1.pth")
    s1.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    # the checkpoint (nnU-Net's dict, see recorded_trainer.save_checkpoint) carries the record in its init_args' plans
    assert saved["init_args"]["plans"][PLANS_KEY]["sam"]["base"]["path"] == os.path.abspath(sam_datasets["sam_file"])
    assert not any(SAMSegNet_is_base(k) for k in saved["network_weights"])

    monkeypatch.setenv("NNUNET_PROMPT_SEQLORA_FROM", ckpt)
    s2 = _trainer(sam_datasets, ONE_LABEL_ID, "SAMLoRATrainer_SeqLoRA")
    s2.initialize()
    taken = s2.hand_over_stage1()
    w1 = saved["network_weights"]
    assert any(f".lora_B.{STAGE1}." in k for k in taken)
    own = dict(s2.network.named_parameters())
    assert all(torch.equal(own[k], w1[k]) and not own[k].requires_grad for k in w1 if ".lora_" in k)
    assert "decoder.0.weight" in taken and "decoder.7.weight" not in taken  # class layer: 3 vs 2 outputs
    before = {k: v.detach().clone() for k, v in own.items()}
    assert all(np.isfinite(_steps(s2, 2)))
    after = dict(s2.network.named_parameters())
    assert all(torch.equal(after[k], before[k]) for k in before if f".{STAGE1}." in k)
    assert any(not torch.equal(after[k], before[k]) for k in before if f".lora_A.{STAGE2}." in k)
    assert not torch.equal(after["seqlora.alpha"], before["seqlora.alpha"])
    assert not torch.equal(after["encoder_gates"], before["encoder_gates"])


def SAMSegNet_is_base(key):
    from nnunet_prompt.sam.network import SAMSegmentationNet
    return SAMSegmentationNet.is_base_key(key)


def test_slice_wise_box_prompts_in_training_and_in_nnunets_2d_prediction(sam_datasets, monkeypatch):
    """Training: one box per target per slice. Prediction: a 3D box prompt becomes the box on every slice it
    spans, and nnU-Net's 2d sliding window hands each slice its own prompt channels."""
    from nnunet_prompt.inference.predictor import PromptPredictor
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv(ENV_VAR, sam_datasets["sam_file"])
    t = _trainer(sam_datasets, ONE_LABEL_ID, "SAMLoRATrainer_box")
    t.initialize()
    dl, _ = t.get_dataloaders()
    batch = next(dl)
    target = t.select_targets([batch["target"].to(t.device)])[0]
    prompts = t.simulate_prompts(batch["data"], target, rounds=1)
    assert prompts.shape == (batch["data"].shape[0], 4, 64, 64)
    assert prompts[:, POS].sum() == 0 and prompts[:, MASK].sum() == 0
    for i in range(target.shape[0]):
        obj = target[i, 0] == 1
        if obj.any():
            ys, xs = torch.nonzero(obj, as_tuple=True)
            box = prompts[i, BOX] > 0
            assert box[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # box covers the target (+ margin)
        else:
            assert prompts[i].sum() == 0

    class BoxEcho(torch.nn.Module):
        """object logit = box channel: shows which prompt pixels each 2D slice receives"""
        def forward(self, x):
            return torch.stack([torch.zeros_like(x[:, 1 + BOX]), x[:, 1 + BOX] - 0.5], 1)

    pred = PromptPredictor(tile_step_size=0.5, use_gaussian=False, use_mirroring=False, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    pred.manual_initialization(BoxEcho(), t.plans_manager, t.configuration_manager, None, t.dataset_json,
                               "SAMLoRATrainer_box", None)
    pred.prompt_encoding = t.prompt_encoding
    data = torch.zeros((1, 6, 40, 40))
    channels = torch.zeros((4, 6, 40, 40))
    channels[BOX, 2:4, 10:20, 5:30] = 1  # a 3D box over slices 2-3
    logits = pred.predict_prompted_logits(data, {1: channels})
    fg = logits[1] > 0
    assert fg[2:4, 10:20, 5:30].all() and fg.sum() == 2 * 10 * 25


@pytest.fixture(scope="module")
def box_trained(sam_datasets):
    """SAMLoRATrainer_box_demo through `nnUNetv2_train`: 1 epoch of 2 iterations, then `--c` to a second epoch."""
    env = dict(sam_datasets["env"], NNUNET_PROMPT_DEMO_ITERS="2", NNUNET_PROMPT_SAM_CHECKPOINT=sam_datasets["sam_file"],
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", sam_datasets["env"]["OMP_NUM_THREADS"]))
    tr = "SAMLoRATrainer_box_demo"
    cmd = [console_script("nnUNetv2_train"), str(ONE_LABEL_ID), CONFIG, "0", "-tr", tr, "-p", PLANS, "-device", "cpu"]
    first = run(cmd, dict(env, NNUNET_PROMPT_DEMO_EPOCHS="1"))
    assert first.returncode == 0, first.stdout[-5000:]
    folder = os.path.join(env["nnUNet_results"], sam_datasets["names"][ONE_LABEL_ID], f"{tr}__{PLANS}__{CONFIG}")
    ckpt1 = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    # resume: no environment variable needed any more, the base is recorded in the plans record
    env_c = {k: v for k, v in env.items() if k != ENV_VAR}
    second = run(cmd + ["--c"], dict(env_c, NNUNET_PROMPT_DEMO_EPOCHS="2"))
    assert second.returncode == 0, second.stdout[-5000:]
    return {"folder": folder, "env": env, "ckpt1": ckpt1, "tr": tr}


def test_nnunetv2_train_resume_and_small_checkpoints(box_trained, sam_datasets):
    folder = box_trained["folder"]
    info = json.load(open(os.path.join(folder, "plans.json")))["nnunet_prompt"]["sam"]
    assert info["base"]["path"] == os.path.abspath(sam_datasets["sam_file"])
    assert not os.path.exists(os.path.join(folder, "sam_model.json"))
    assert box_trained["ckpt1"]["current_epoch"] == 1
    path = os.path.join(folder, "fold_0", "checkpoint_final.pth")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2 and ckpt["init_args"]["plans"]["nnunet_prompt"]["sam"] == info
    assert "sam_model" not in ckpt  # nnU-Net's checkpoint as nnU-Net wrote it
    weights = ckpt["network_weights"]
    assert not any(SAMSegNet_is_base(k) for k in weights)
    assert any(".lora_A." in k for k in weights) and any(k.startswith("decoder.") for k in weights)
    base_bytes = os.path.getsize(sam_datasets["sam_file"])
    assert sum(v.numel() * v.element_size() for v in weights.values()) < base_bytes
    val = os.path.join(folder, "fold_0", "validation")
    assert "foreground_mean" in json.load(open(os.path.join(val, "summary.json")))
    used = json.load(open(os.path.join(val, "simulated_prompts_rank0.json")))
    assert used and all(v["prompt"] == "box" for v in used.values())


def test_nnunet_prompt_predict_loads_the_small_checkpoint_with_the_recorded_base(box_trained, sam_datasets, tmp_path):
    env = {k: v for k, v in box_trained["env"].items() if k != ENV_VAR}
    raw = os.path.join(env["nnUNet_raw"], sam_datasets["names"][ONE_LABEL_ID])
    images = os.path.join(raw, "imagesTs")
    case = sorted(os.listdir(images))[0][:-len("_0000.nii.gz")]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({case: {"boxes": [{"min": [5, 5, 1], "max": [30, 30, 5]}]}}))
    out = tmp_path / "pred"
    cmd = [console_script("nnunet-prompt"), "predict", "-i", images, "-o", str(out), "-d", str(ONE_LABEL_ID), "-c",
           CONFIG, "-f", "0", "-tr", box_trained["tr"], "-p", PLANS, "--prompts", str(prompts), "-device", "cpu"]
    proc = run(cmd, env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    import SimpleITK as sitk
    pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
    ref = sitk.ReadImage(os.path.join(images, f"{case}_0000.nii.gz"))
    assert pred.GetSize() == ref.GetSize()
    # plain nnUNetv2_predict (no prompts: empty prompt channels) rebuilds the encoder from plans.json alone
    plain = run([console_script("nnUNetv2_predict"), "-i", images, "-o", str(tmp_path / "plain"), "-d",
                 str(ONE_LABEL_ID), "-c", CONFIG, "-f", "0", "-tr", box_trained["tr"], "-p", PLANS, "-device", "cpu",
                 "--disable_tta"], env)
    assert plain.returncode == 0, plain.stdout[-5000:]
    assert os.path.isfile(tmp_path / "plain" / f"{case}.nii.gz")
    # a moved base file is refused with the fix named
    proc = run(cmd[:5] + [str(tmp_path / "pred2")] + cmd[6:], dict(env, **{ENV_VAR: str(tmp_path / "nowhere.pth")}))
    assert proc.returncode != 0 and ENV_VAR in proc.stdout


def test_interactive_session_prompts_a_2d_model_slice_by_slice(box_trained, sam_datasets, monkeypatch):
    """A 2d SAM box model in the interactive session: an interaction predicts exactly its prompt's slices
    (whole slices, no growth into other slices), and the mask comes back on the image's grid."""
    from nnunet_prompt.inference.session import InteractiveSession
    monkeypatch.delenv(ENV_VAR, raising=False)  # the base file comes from the model folder's records
    raw = os.path.join(sam_datasets["env"]["nnUNet_raw"], sam_datasets["names"][ONE_LABEL_ID])
    image = os.path.join(raw, "imagesTs", sorted(os.listdir(os.path.join(raw, "imagesTs")))[0])
    s = InteractiveSession(box_trained["folder"], fold=0, device="cpu")
    assert s.slice_wise
    s.set_image(image)
    depth, height, width = s._grid.shape
    mask = s.add_box((5, 5, 2), (30, 30, 4))
    assert mask.shape == tuple(s._grid.raw_shape_zyx)
    assert s.last_region == ((2, 0, 0), (5, height, width))
    outside = np.ones(depth, bool)
    outside[2:5] = False
    assert not mask[outside].any()
    s.add_point((20, 20, 6))
    assert s.last_region == ((6, 0, 0), (7, height, width))
    s.undo()
    assert not s.mask[6].any() and (s.mask == mask).all()


@pytest.mark.parametrize("did,name", [(TWO_LABEL_ID, "SAMLoRATrainer"), (TWO_LABEL_ID, "SAMLoRATrainer_SeqLoRA_noPrompt"),
                                      (ONE_LABEL_ID, "SAMLoRATrainer_box"), (ONE_LABEL_ID, "SAMLoRATrainer_prompt"),
                                      (ONE_LABEL_ID, "SAMLoRATrainer_GaRPA_ProViCMA"),
                                      (ONE_LABEL_ID, "SAMLoRATrainer_SeqLoRA")])
def test_every_trainable_parameter_gets_a_gradient_on_one_ddp_rank(sam_datasets, monkeypatch, did, name):
    """DDP (-num_gpus) runs without find_unused_parameters: one rank's steps (one case; ddp_harness) through the
    trainer's train_step reach every trainable parameter, in every prompt mode of a prompted variant."""
    from ddp_harness import as_one_rank_of_two, parameters_without_gradient, prompt_modes, prompted_step
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv(ENV_VAR, sam_datasets["sam_file"])
    t = _trainer(sam_datasets, did, name)
    t.initialize()
    as_one_rank_of_two(t)
    dl, _ = t.get_dataloaders()
    t.network.train()
    modes = prompt_modes(t) if hasattr(t, "simulator") else [None, None]
    for mode in modes:
        batch = next(dl)
        assert batch["data"].shape[0] == 1
        t.train_step(batch) if mode is None else prompted_step(t, batch, *mode)
        missing = parameters_without_gradient(t.network)
        assert not missing, f"{name} {mode}: {missing}"


def test_prompted_sam_trains_under_two_process_ddp(sam_datasets, tmp_path, monkeypatch):
    """SAMLoRATrainer_GaRPA_ProViCMA under real DDP (2 processes, gloo; see ddp_harness): the SAM network has buffers
    (DDP broadcasts them before a forward pass) and the ranks draw different numbers of interaction rounds (1..5),
    i.e. run different numbers of no-grad refinement passes through the DDP wrapper; the collectives still match (no
    timeout) and after 3 steps the ranks' weights are identical."""
    import ddp_harness
    for k, v in sam_datasets["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(ENV_VAR, sam_datasets["sam_file"])
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    name = "SAMLoRATrainer_GaRPA_ProViCMA"
    ddp_harness.spawn(ddp_harness.training_worker, 2, ONE_LABEL_ID, CONFIG, name, PLANS, 3, str(tmp_path))
    r0, r1 = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert r0["batch_size"] == r1["batch_size"] == 1
    assert any(not torch.equal(r0["initial"][k], v) for k, v in r0["weights"].items())
    assert [k for k in r0["weights"] if not torch.equal(r0["weights"][k], r1["weights"][k])] == []
    assert not torch.equal(r0["rng"]["simulator"], r1["rng"]["simulator"])

"""SAMAdapter3DTrainer (AutoSAM Adapter): the 3D-adapted SAM encoder built from a tiny official-format
SAM file, the auto prompt generator, the aggregation decoder, what trains and what stays frozen, and the trainer
through nnU-Net's own code (in this process, and `nnUNetv2_train` with `--c`)."""
import os

import numpy as np
import pytest
import torch

from conftest import CONFIG
from sam_adapter3d_fixtures import (SAM_PLANS, sam3d_plans, teacher_fold, test_trainer_folder,  # noqa: F401
                                    tiny_sam)
from nnunet_prompt.networks.auto_sam_adapter import AutoSAMAdapter3D, AutoSAMOptions, exclude_from_checkpoints
from nnunet_prompt.sam.adapter3d import SAMEncoder3D
from nnunet_prompt.sam.checkpoint import ENV_VAR, SAMCheckpointError, load_sam_image_encoder


def _net(path, patch=(32, 32, 32), channels=1, classes=3, **options):
    encoder2d, _ = load_sam_image_encoder(path, image_size=patch[1])
    options = AutoSAMOptions(window_size=2, **options)
    return AutoSAMAdapter3D(SAMEncoder3D(encoder2d, patch, options.window_size), channels, classes, options)


@pytest.mark.parametrize("patch", [(32, 32, 32), (16, 32, 40)])
def test_3d_shapes_through_every_module(tiny_sam, patch):
    torch.manual_seed(0)
    net = _net(tiny_sam, patch, channels=2, classes=3)
    x = torch.randn(2, 2, *patch)
    grid = tuple(p // 8 for p in patch)
    rgb = net.to_rgb(x)
    assert rgb.shape == (2, 3, *patch)
    enc = net.encoder
    tokens = enc.patch_embed(rgb)
    assert tokens.shape == (2, 32, *grid)
    t = enc.pos(tokens.permute(0, 2, 3, 4, 1))
    assert t.shape == (2, *grid, 32)
    for block in enc.blocks:  # windowed (2x2x2) and global blocks keep the token grid
        t = block(t)
        assert t.shape == (2, *grid, 32)
    embedding, stages, last = enc(rgb)
    assert embedding.shape == (2, 16, *grid)  # the 3D bottleneck: SAM's output width
    assert len(stages) == 2 and all(s.shape == (2, 32, *grid) for s in stages)  # after global blocks 1 and 3
    assert net.apg(last).shape == embedding.shape  # the prompt embedding matches the image embedding
    out = net(x)
    assert out.shape == (2, 3, *patch)


def test_a_volume_of_identical_slices_gets_sams_2d_features_at_every_depth(tiny_sam):
    """Before training, the 3D encoder is SAM: the depth convolution averages identical slices, the depth tables
    are zero, the adapters are the identity, and attention over copies of a slice's tokens is attention over the
    slice. So every slice of the last block's output equals SAM's 2D encoder output for that slice."""
    torch.manual_seed(0)
    encoder2d, _ = load_sam_image_encoder(tiny_sam, image_size=32)
    encoder3d = SAMEncoder3D(encoder2d, (32, 32, 32), window_size=2).eval()
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        hidden2d = encoder2d(image, output_hidden_states=True).hidden_states[-1]  # (1, 4, 4, C)
        _, _, last = encoder3d(image[:, :, None].expand(1, 3, 32, 32, 32).contiguous())
    for d in range(last.shape[2]):
        assert torch.allclose(last[0, :, d].permute(1, 2, 0), hidden2d[0], atol=1e-5)
    # and the relative tables matter: zeroing SAM's in-plane tables changes the result
    with torch.no_grad():
        for block in encoder3d.blocks:
            block.attn.attn.rel_pos_h.zero_()
        _, _, changed = encoder3d(image[:, :, None].expand(1, 3, 32, 32, 32).contiguous())
    assert not torch.allclose(changed, last, atol=1e-4)


def test_only_adapters_norms_convolutions_and_depth_tables_train(tiny_sam):
    net = _net(tiny_sam)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    modules = dict(net.named_modules())
    for name in trainable:
        owner = modules[name.rsplit(".", 1)[0]]
        assert (isinstance(owner, (torch.nn.Conv3d, torch.nn.ConvTranspose3d, torch.nn.LayerNorm,
                                   torch.nn.InstanceNorm3d))
                or ".adapter." in name or name.endswith(("depth_table", "rel_pos_d"))), name
    # frozen: exactly what came from SAM's file, apart from the layer norms
    assert frozen == set(net.frozen_parameter_names())
    assert "encoder.patch_embed.in_plane.weight" in frozen and "encoder.pos.table2d" in frozen
    for i in range(4):
        assert {f"encoder.blocks.{i}.attn.attn.qkv.weight", f"encoder.blocks.{i}.attn.attn.proj.weight",
                f"encoder.blocks.{i}.attn.attn.rel_pos_h", f"encoder.blocks.{i}.mlp.lin1.weight"} <= frozen
        assert {f"encoder.blocks.{i}.layer_norm1.weight", f"encoder.blocks.{i}.adapter.conv.weight",
                f"encoder.blocks.{i}.attn.rel_pos_d"} <= trainable
    assert {"encoder.patch_embed.depth.weight", "encoder.pos.depth_table", "to_rgb.weight",
            "encoder.bottleneck.conv1.weight"} <= trainable
    # the frozen weights are the file's
    encoder2d, _ = load_sam_image_encoder(tiny_sam, image_size=32)
    assert torch.equal(net.encoder.blocks[2].attn.attn.qkv.weight, encoder2d.layers[2].attn.qkv.weight)
    assert torch.equal(net.encoder.patch_embed.in_plane.weight[:, :, 0], encoder2d.patch_embed.projection.weight)
    # every trainable parameter gets a gradient (DDP runs without find_unused_parameters)
    net(torch.randn(1, 1, 32, 32, 32)).square().mean().backward()
    assert not [n for n in trainable if dict(net.named_parameters())[n].grad is None]
    assert all(p.grad is None for n, p in net.named_parameters() if n in frozen)


def test_depth_tables_start_at_zero_and_adapters_start_as_the_identity(tiny_sam):
    net = _net(tiny_sam)
    assert net.encoder.pos.depth_table.shape == (4, 32) and not net.encoder.pos.depth_table.any()
    assert all(not b.attn.rel_pos_d.any() for b in net.encoder.blocks)
    x = torch.randn(1, 4, 4, 4, 32)
    for block in net.encoder.blocks:
        assert torch.equal(block.adapter(x), x)


def test_checkpoints_leave_out_the_frozen_sam_weights(tiny_sam):
    net = _net(tiny_sam)
    exclude_from_checkpoints(net, net.frozen_parameter_names())
    state = net.state_dict()
    assert not set(net.frozen_parameter_names()) & set(state)
    assert "encoder.pos.depth_table" in state and "encoder.blocks.0.layer_norm1.weight" in state
    fresh = _net(tiny_sam)
    exclude_from_checkpoints(fresh, fresh.frozen_parameter_names())
    with torch.no_grad():
        state["encoder.pos.depth_table"].fill_(0.5)
    fresh.load_state_dict(state)  # strict: only the frozen keys may be missing
    assert torch.equal(fresh.encoder.pos.depth_table, state["encoder.pos.depth_table"])
    del state["encoder.pos.depth_table"]
    with pytest.raises(RuntimeError, match="depth_table"):
        fresh.load_state_dict(state)


@pytest.mark.parametrize("apg,mla", [(True, False), (False, True), (False, False)])
def test_table3_ablations(tiny_sam, apg, mla):
    net = _net(tiny_sam, use_apg=apg, use_multilayer_aggregation=mla)
    assert (net.apg is not None) == apg
    assert len(net.decoder.stage_proj) == (2 if mla else 0)
    assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def _trainer(planned_dataset, name, plans=SAM_PLANS):
    from nnunetv2.utilities.file_path_utilities import load_json
    import nnunet_prompt_trainers.SAMAdapter3DTrainer as module
    pre = os.path.join(planned_dataset["env"]["nnUNet_preprocessed"], planned_dataset["name"])
    return getattr(module, name)(dict(load_json(os.path.join(pre, f"{plans}.json")), continue_training=False), CONFIG, 0,
                                 load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))


def test_planner_fixes_an_isotropic_patch_and_replans_the_unet(sam3d_plans):
    from nnunetv2.utilities.file_path_utilities import load_json
    pre = os.path.join(sam3d_plans["env"]["nnUNet_preprocessed"], sam3d_plans["name"])
    plans = load_json(os.path.join(pre, f"{SAM_PLANS}.json"))
    default = load_json(os.path.join(pre, "nnUNetPlansNarrow.json"))["configurations"][CONFIG]
    conf = plans["configurations"][CONFIG]
    assert conf["patch_size"] == [32, 32, 32] and conf["batch_size"] == 2
    assert conf["data_identifier"] == default["data_identifier"] and conf["spacing"] == default["spacing"]
    kw = conf["architecture"]["arch_kwargs"]
    assert kw["n_stages"] == len(kw["strides"]) == len(kw["features_per_stage"]) == len(kw["kernel_sizes"])
    assert np.all(32 % np.prod(np.array(kw["strides"]), 0) == 0)


def test_missing_sam_checkpoint_is_a_clear_error(sam3d_plans, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(SAMCheckpointError, match=f"{ENV_VAR}.*randomInit"):
        _trainer(sam3d_plans, "SAMAdapter3DTrainer").initialize()
    monkeypatch.setenv(ENV_VAR, "/nonexistent/sam_vit_b.pth")
    with pytest.raises(SAMCheckpointError, match="does not exist"):
        _trainer(sam3d_plans, "SAMAdapter3DTrainer").initialize()


def test_random_init_variant_needs_no_file_and_keeps_everything_in_checkpoints(sam3d_plans, tiny_sam, monkeypatch):
    from nnunet_prompt.model_record import put_record
    monkeypatch.setenv(ENV_VAR, tiny_sam)  # the shape only: ViT-B would be too slow here
    trainer = _trainer(sam3d_plans, "SAMAdapter3DTrainer_randomInit")
    record = trainer.fresh_record()
    assert record.sam["base"] is None and record.sam["vision_config"]["hidden_size"] == 32
    put_record(trainer.plans_manager.plans, record)
    monkeypatch.delenv(ENV_VAR)
    net = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 3, False)
    assert set(net.frozen_parameter_names()) <= set(net.state_dict())


def test_a_training_step_through_nnunets_trainer(sam3d_plans, tiny_sam, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv(ENV_VAR, tiny_sam)
    trainer = _trainer(sam3d_plans, "SAMAdapter3DTrainer")
    trainer.initialize()
    net = trainer.network
    assert isinstance(net, AutoSAMAdapter3D) and not trainer.enable_deep_supervision
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in net.parameters() if p.requires_grad}
    frozen_before = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    dl_train, _ = trainer.get_dataloaders()
    batch = next(dl_train)
    assert torch.is_tensor(batch["target"])  # no deep-supervision targets
    net.train()
    assert np.isfinite(trainer.train_step(batch)["loss"])
    assert all(torch.equal(p, frozen_before[n]) for n, p in net.named_parameters() if not p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.decoder.parameters())


def test_nnunetv2_train_stores_the_sam_reference_and_resumes_with_c(teacher_fold):
    import json
    from nnunet_prompt.model_record import PLANS_KEY
    from conftest import run
    ckpt = torch.load(os.path.join(teacher_fold["fold"], "checkpoint_final.pth"), map_location="cpu",
                      weights_only=False)
    assert ckpt["current_epoch"] == 1
    weights = ckpt["network_weights"]
    assert "encoder.pos.depth_table" in weights and not any(k.endswith("attn.attn.qkv.weight") for k in weights)
    record = json.load(open(os.path.join(teacher_fold["folder"], "plans.json")))[PLANS_KEY]
    assert record["sam"]["base"]["path"] == teacher_fold["env"][ENV_VAR]
    assert record["network"]["use_apg"] is True and record["trainer"].startswith("SAMAdapter3DTrainer")
    assert os.path.isfile(os.path.join(teacher_fold["fold"], "validation", "summary.json"))
    # --c without the variable: the stored reference finds the SAM file
    env = dict(teacher_fold["env"], NNUNET_PROMPT_DEMO_EPOCHS="2")
    env.pop(ENV_VAR)
    proc = run(teacher_fold["cmd"] + ["--c"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    ckpt = torch.load(os.path.join(teacher_fold["fold"], "checkpoint_final.pth"), map_location="cpu",
                      weights_only=False)
    assert ckpt["current_epoch"] == 2
    assert "Epoch 1" in proc.stdout and "Epoch 0" not in proc.stdout


@pytest.mark.parametrize("name", ["SAMAdapter3DTrainer", "SAMAdapter3DTrainer_noAPG", "SAMAdapter3DTrainer_noMLA",
                                  "SAMAdapter3DTrainer_noAPG_noMLA"])
def test_every_trainable_parameter_gets_a_gradient_on_one_ddp_rank(sam3d_plans, tiny_sam, monkeypatch, name):
    """DDP (-num_gpus) runs without find_unused_parameters: one rank's step (one case; ddp_harness) reaches every
    adapter, APG, decoder and depth-table parameter that trains, in each Table 3 ablation."""
    from ddp_harness import as_one_rank_of_two, parameters_without_gradient
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv(ENV_VAR, tiny_sam)
    trainer = _trainer(sam3d_plans, name)
    trainer.initialize()
    as_one_rank_of_two(trainer)
    dl_train, _ = trainer.get_dataloaders()
    trainer.network.train()
    batch = next(dl_train)
    assert batch["data"].shape[0] == 1
    assert np.isfinite(trainer.train_step(batch)["loss"])
    missing = parameters_without_gradient(trainer.network)
    assert not missing, missing

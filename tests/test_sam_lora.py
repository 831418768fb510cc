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

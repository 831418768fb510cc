"""The full SAM / MedSAM model (nnunet_prompt.sam.full_model) and the MedSAM prompt network
(nnunet_prompt.sam.medsam_network), on tiny SAMs that the tests build and save in the official file format."""
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import SamConfig

from nnunet_prompt.prompts.encoding import BOX, POS
from nnunet_prompt.sam.checkpoint import SAMCheckpointError, save_sam_checkpoint
from nnunet_prompt.sam.full_model import (infer_sam_config, load_sam_model, official_sam_state_dict,
                                          random_sam_model, save_sam_model_checkpoint, tiny_sam_config)
from nnunet_prompt.sam.intensity import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from nnunet_prompt.sam.medsam_network import (BACKGROUND_LOGIT, FINETUNE_MODES, build_medsam_network,
                                              config_signature)

S, INPUT = 32, 64  # patch and model input differ: exercises the image resize and the box scaling


def _informative(model):
    # transformers' 0.02-std init makes a tiny SAM predict mask logits of ~1e-5, too small to compare: weights of
    # unit gain instead; SAM initialises position tables at zero, random ones make position errors visible
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(std=p[0].numel() ** -0.5 if "embed" not in name and "token" not in name else 1.0)
        model.vision_encoder.pos_embed.normal_()
        for layer in model.vision_encoder.layers:
            layer.attn.rel_pos_h.normal_()
            layer.attn.rel_pos_w.normal_()
    return model


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    torch.manual_seed(0)
    config = tiny_sam_config(INPUT)
    config.mask_decoder_config.iou_head_depth = 4  # not SAM's 3: exercises the MLP layer renaming
    model = _informative(random_sam_model(config))
    path = str(tmp_path_factory.mktemp("medsam") / "medsam_tiny.pth")
    save_sam_model_checkpoint(path, model)
    return model, path


def _net(sam_file, pixel_norm="unit", channels=1, finetune="full"):
    _, path = sam_file
    return build_medsam_network(None, path, pixel_norm, ["RGBTo0_1Normalization"] * channels, {}, finetune)


def _input(channels=1, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, channels + 4, S, S)
    x[:, :channels] = torch.rand(batch, channels, S, S, generator=g)
    return x


# ------------------------------------------------------------------------------------------------ loading
def test_official_names_round_trip_and_inferred_config(sam_file):
    model, path = sam_file
    keys = set(torch.load(path, weights_only=True))
    for key in ("image_encoder.blocks.0.attn.qkv.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                "prompt_encoder.point_embeddings.3.weight", "prompt_encoder.mask_downscaling.4.bias",
                "prompt_encoder.no_mask_embed.weight", "mask_decoder.transformer.layers.1.norm4.weight",
                "mask_decoder.transformer.norm_final_attn.bias", "mask_decoder.output_upscaling.1.weight",
                "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight", "mask_decoder.iou_prediction_head.layers.3.bias",
                "mask_decoder.transformer.layers.0.cross_attn_image_to_token.v_proj.weight"):
        assert key in keys, key
    assert not any("shared_embedding" in k or "proj_in" in k or "layer_norm" in k for k in keys)

    loaded, config = load_sam_model(path)
    ref = model.state_dict()
    assert set(loaded.state_dict()) == set(ref)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k
    v, p, d = config.vision_config, config.prompt_encoder_config, config.mask_decoder_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.global_attn_indexes, v.window_size,
            v.image_size, v.output_channels, v.num_pos_feats) == (32, 3, 4, [2], 2, INPUT, 32, 16)
    assert (p.hidden_size, p.mask_input_channels, p.num_point_embeddings, p.image_size) == (32, 8, 4, INPUT)
    assert (d.hidden_size, d.num_hidden_layers, d.mlp_dim, d.attention_downsample_rate, d.num_multimask_outputs,
            d.iou_head_depth, d.iou_head_hidden_dim, d.num_attention_heads) == (32, 2, 64, 2, 3, 4, 24, 8)
    # the official names map back onto themselves
    assert set(official_sam_state_dict(loaded)) == keys


def test_medsam_nesting_under_model_loads(sam_file, tmp_path):
    model, path = sam_file
    nested = tmp_path / "medsam_nested.pth"
    torch.save({"model": torch.load(path, weights_only=True), "epoch": 3}, nested)
    loaded, _ = load_sam_model(str(nested))
    assert torch.equal(loaded.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)


def test_encoder_only_and_incomplete_files_are_refused_clearly(sam_file, tmp_path):
    model, path = sam_file
    encoder_only = tmp_path / "sam_encoder_only.pth"
    save_sam_checkpoint(str(encoder_only), model.vision_encoder)
    with pytest.raises(SAMCheckpointError, match=r"sam_encoder_only\.pth.*holds no prompt_encoder\.\* / "
                                                 r"mask_decoder\.\* weights.*medsam_vit_b\.pth"):
        load_sam_model(str(encoder_only))
    state = torch.load(path, weights_only=True)
    del state["mask_decoder.transformer.layers.1.mlp.lin2.bias"]
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(SAMCheckpointError, match=r"broken\.pth.*missing.*layers\.1\.mlp\.lin2\.bias"):
        load_sam_model(str(broken))
    with pytest.raises(SAMCheckpointError, match="holds no mask_decoder"):
        infer_sam_config({k: v for k, v in state.items() if not k.startswith("mask_decoder.")})


def test_random_model_is_not_all_zero_and_config_survives_json():
    config = tiny_sam_config(INPUT)
    model = random_sam_model(config)
    assert model.vision_encoder.layers[0].attn.qkv.weight.std() > 1e-3
    assert model.mask_decoder.transformer.layers[0].self_attn.q_proj.weight.std() > 1e-3
    again = SamConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert config_signature(again) == config_signature(config)
    assert again.mask_decoder_config.layer_norm_eps == 1e-5


# ------------------------------------------------------------------------------------------------ network
def _reference_mask_logit(model, image, box, pixel_norm):
    """What SamModel itself predicts for one slice and one box (x0, y0, x1, y1 in patch pixels), with the
    pixel preparation written out here: [0, 1] RGB, SAM's or MedSAM's normalisation, bilinear resize to the
    model input, box scaled by the same factor, low-resolution mask upsampled to the patch."""
    rgb = image.clamp(0, 1).expand(1, 3, S, S) if image.shape[1] == 1 else image.clamp(0, 1)
    if pixel_norm == "imagenet":
        rgb = (rgb * 255 - torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    pixels = F.interpolate(rgb, size=(INPUT, INPUT), mode="bilinear", align_corners=False)
    boxes = torch.tensor([[box]], dtype=torch.float32) * (INPUT / S)
    with torch.no_grad():
        out = model(pixel_values=pixels, input_boxes=boxes, multimask_output=False)
    return F.interpolate(out.pred_masks[:, 0], size=(S, S), mode="bilinear", align_corners=False)[0, 0], \
        out.iou_scores[0, 0, 0]


@pytest.mark.parametrize("pixel_norm,channels", [("unit", 1), ("imagenet", 3)])
def test_one_box_equals_sam_models_own_prediction(sam_file, pixel_norm, channels):
    model, _ = sam_file
    net = _net(sam_file, pixel_norm, channels).eval()
    x = _input(channels)
    x[0, channels + BOX, 6:15, 3:21] = 1.0  # rows 6..14, columns 3..20: not square, so x/y mix-ups show
    x[0, channels + POS, 20:24, 20:24] = 1.0  # other prompt channels are ignored
    with torch.no_grad():
        out = net(x, return_boxes=True)
    assert out.boxes.tolist() == [[3.0, 6.0, 20.0, 14.0]] and out.box_sample.tolist() == [0]
    ref, ref_iou = _reference_mask_logit(model.eval(), x[:, :channels], (3, 6, 20, 14), pixel_norm)
    assert out.logits.shape == (1, 2, S, S)
    assert torch.equal(out.logits[:, 0], torch.zeros(1, S, S))
    assert torch.allclose(out.logits[0, 1], ref, atol=1e-5)
    assert torch.allclose(out.box_logits[0], ref, atol=1e-5)
    assert torch.allclose(out.iou_predictions[0], ref_iou, atol=1e-6)
    # nnU-Net's softmax over the two outputs is MedSAM's sigmoid
    assert torch.allclose(torch.softmax(out.logits, 1)[0, 1], torch.sigmoid(ref), atol=1e-6)
    # the plain forward gives the same logits
    with torch.no_grad():
        assert torch.allclose(net(x), out.logits, atol=1e-6)
    # a transposed box gives another mask: the test can tell x from y
    swapped, _ = _reference_mask_logit(model, x[:, :channels], (6, 3, 14, 20), pixel_norm)
    assert not torch.allclose(swapped, ref, atol=1e-3)


def test_two_components_give_two_boxes_and_their_union(sam_file):
    net = _net(sam_file).eval()
    x = _input(batch=2)
    x[0, 1 + BOX, 2:8, 2:10] = 1.0
    x[0, 1 + BOX, 18:30, 15:25] = 1.0
    x[1, 1 + BOX, 10:20, 10:20] = 1.0
    single = []
    for rows, cols in (((2, 8), (2, 10)), ((18, 30), (15, 25))):
        y = x[:1].clone()
        y[0, 1 + BOX] = 0
        y[0, 1 + BOX, rows[0]:rows[1], cols[0]:cols[1]] = 1.0
        with torch.no_grad():
            single.append(net(y)[0, 1])
    with torch.no_grad():
        out = net(x, return_boxes=True)
    assert out.box_sample.tolist() == [0, 0, 1]
    assert out.boxes[:2].tolist() == [[2.0, 2.0, 9.0, 7.0], [15.0, 18.0, 24.0, 29.0]]
    assert torch.allclose(out.box_logits[0], single[0], atol=1e-5)
    assert torch.allclose(out.box_logits[1], single[1], atol=1e-5)
    assert torch.allclose(out.logits[0, 1], torch.maximum(single[0], single[1]), atol=1e-5)
    assert not torch.allclose(single[0], single[1], atol=1e-3)
    # the second sample is its own slice: computed as if alone
    with torch.no_grad():
        alone = net(x[1:])
    assert torch.allclose(out.logits[1], alone[0], atol=1e-5)


def test_overlapping_boxes_merge_and_no_box_is_background(sam_file):
    net = _net(sam_file).eval()
    x = _input(batch=2)
    x[0, 1 + BOX, 4:12, 4:12] = 1.0
    x[0, 1 + BOX, 10:20, 8:26] = 1.0  # overlaps the first: one component, one box
    calls = []
    handle = net.sam.vision_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        out = net(x, return_boxes=True)
        empty = net(_input(batch=2), return_boxes=True)
    handle.remove()
    assert out.boxes.tolist() == [[4.0, 4.0, 25.0, 19.0]] and out.box_sample.tolist() == [0]
    assert torch.equal(out.logits[1, 1], torch.full((S, S), BACKGROUND_LOGIT))
    assert torch.equal(empty.logits[:, 1], torch.full((2, S, S), BACKGROUND_LOGIT))
    assert empty.boxes.shape == (0, 4) and empty.box_logits.shape == (0, S, S)
    assert calls == [1]  # the encoder ran for the sample with a box only, and not at all without boxes


def _step_gradients(net, x):
    net.train()
    net.zero_grad(set_to_none=True)
    target = torch.zeros(x.shape[0], S, S, dtype=torch.long)
    target[:, 8:16, 8:16] = 1
    F.cross_entropy(net(x), target).backward()  # nnU-Net's loss sees the logits only
    return {n: p.grad for n, p in net.named_parameters()}


@pytest.mark.parametrize("finetune", FINETUNE_MODES)
def test_every_trainable_parameter_gets_a_gradient(sam_file, finetune):
    net = _net(sam_file, finetune=finetune)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    encoder = {n for n, _ in net.named_parameters() if n.startswith("sam.vision_encoder.")}
    decoder = {n for n, _ in net.named_parameters() if n.startswith("sam.mask_decoder.")}
    assert decoder <= trainable
    prompt = {n for n in trainable if n.startswith(("sam.prompt_encoder.", "sam.shared_image_embedding."))}
    # what a box reaches in the prompt encoder is trained (LiteMedSAM), the point / mask embeddings are not
    assert prompt == {"sam.prompt_encoder.point_embed.2.weight", "sam.prompt_encoder.point_embed.3.weight",
                      "sam.prompt_encoder.no_mask_embed.weight"}
    if finetune == "full":
        assert encoder <= trainable
    elif finetune == "frozen_encoder":
        assert not encoder & trainable
    else:
        assert encoder & trainable and all(".lora_" in n for n in encoder & trainable)
        assert any(".query." in n for n in encoder & trainable) and not any(".key." in n for n in encoder & trainable)

    x = _input(batch=2)
    x[0, 1 + BOX, 6:18, 6:18] = 1.0  # one sample with a box, one without
    grads = _step_gradients(net, x)
    assert [n for n in trainable if grads[n] is None] == []
    assert [n for n in frozen if grads[n] is not None] == []
    assert grads["sam.mask_decoder.upscale_conv1.weight"].abs().sum() > 0
    assert grads["sam.prompt_encoder.point_embed.2.weight"].abs().sum() > 0
    if finetune == "full":
        assert grads["sam.vision_encoder.patch_embed.projection.weight"].abs().sum() > 0
    # a batch without any box still reaches every trainable parameter (DDP), with zero gradients
    grads = _step_gradients(net, _input(batch=2))
    assert [n for n in trainable if grads[n] is None] == []
    assert all(float(grads[n].abs().sum()) == 0.0 for n in trainable)


def test_rebuilt_from_the_config_record_and_checkpoint_weights(sam_file, tmp_path):
    for finetune in ("full", "lora"):
        net = _net(sam_file, finetune=finetune).eval()
        record = json.loads(json.dumps(net.sam.config.to_dict()))  # what the trainer keeps in the plans
        rebuilt = build_medsam_network(SamConfig.from_dict(record), None, "unit", ["RGBTo0_1Normalization"], {},
                                       finetune).eval()
        rebuilt.load_state_dict(net.state_dict(), strict=True)
        x = _input()
        x[0, 1 + BOX, 5:20, 7:15] = 1.0
        with torch.no_grad():
            assert torch.allclose(rebuilt(x), net(x), atol=1e-6)
    other = tiny_sam_config(INPUT)
    other.mask_decoder_config.mlp_dim = 48
    with pytest.raises(SAMCheckpointError, match="give the file the model was built from"):
        build_medsam_network(other, sam_file[1], "unit", ["RGBTo0_1Normalization"], {})

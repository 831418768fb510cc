"""The shared SAM image-encoder loading (nnunet_prompt.sam.checkpoint) on tiny encoders saved in the official
segment-anything file format."""
import pytest
import torch
from transformers import SamVisionConfig

from nnunet_prompt.sam.checkpoint import (SAMCheckpointError, load_sam_image_encoder, random_sam_image_encoder,
                                          sam_vision_config, save_sam_checkpoint)


def tiny_config(image_size=64):
    return SamVisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, global_attn_indexes=[2],
                           image_size=image_size, window_size=2, output_channels=16, mlp_dim=48,
                           initializer_range=0.02)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    encoder = random_sam_image_encoder(tiny_config())
    with torch.no_grad():  # SAM initialises position tables at zero; make them informative for the checks
        encoder.pos_embed.normal_()
        for layer in encoder.layers:
            layer.attn.rel_pos_h.normal_()
            layer.attn.rel_pos_w.normal_()
    path = tmp_path / "sam_tiny.pth"
    save_sam_checkpoint(str(path), encoder, extra={"mask_decoder.dummy": torch.zeros(1)})
    return encoder, path


def test_official_key_names(tiny_checkpoint):
    _, path = tiny_checkpoint
    keys = set(torch.load(path, weights_only=True))
    for key in ("image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed",
                "image_encoder.blocks.0.norm1.weight", "image_encoder.blocks.0.attn.qkv.weight",
                "image_encoder.blocks.2.attn.rel_pos_h", "image_encoder.blocks.1.mlp.lin1.weight",
                "image_encoder.blocks.1.norm2.bias", "image_encoder.neck.0.weight", "image_encoder.neck.1.bias",
                "image_encoder.neck.2.weight", "image_encoder.neck.3.weight", "mask_decoder.dummy"):
        assert key in keys


def test_round_trip_gives_the_same_encoder(tiny_checkpoint):
    encoder, path = tiny_checkpoint
    loaded, config = load_sam_image_encoder(str(path))
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 3, 4)
    assert config.global_attn_indexes == [2] and config.window_size == 2 and config.image_size == 64
    x = torch.randn(2, 3, 64, 64)
    encoder.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(encoder(x).last_hidden_state, loaded(x).last_hidden_state, atol=1e-5)


def test_other_input_size_interpolates_position_tables(tiny_checkpoint):
    encoder, path = tiny_checkpoint
    loaded, config = load_sam_image_encoder(str(path), image_size=128)
    assert loaded.pos_embed.shape == (1, 8, 8, 32)
    assert loaded.layers[2].attn.rel_pos_h.shape == (15, 8)  # global layer: 2 * grid - 1
    assert loaded.layers[0].attn.rel_pos_h.shape == (3, 8)  # windowed layers keep their tables
    assert torch.equal(loaded.layers[0].attn.rel_pos_h, encoder.layers[0].attn.rel_pos_h)
    # the corners of the interpolated table follow the pretrained corners' sign pattern (not a fresh table)
    assert torch.corrcoef(torch.stack([loaded.pos_embed[0, ::7, ::7].flatten(),
                                       encoder.pos_embed[0, ::3, ::3].flatten()]))[0, 1] > 0.5
    out = loaded(torch.randn(1, 3, 128, 128)).last_hidden_state
    assert out.shape == (1, 16, 8, 8)


def test_clear_errors(tmp_path, tiny_checkpoint):
    _, path = tiny_checkpoint
    with pytest.raises(SAMCheckpointError, match="does not exist"):
        load_sam_image_encoder(str(tmp_path / "missing.pth"))
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(SAMCheckpointError, match="not a Segment Anything checkpoint"):
        load_sam_image_encoder(str(other))
    with pytest.raises(SAMCheckpointError, match="not vit_b"):
        load_sam_image_encoder(str(path), expected_variant="vit_b")
    with pytest.raises(SAMCheckpointError, match="multiple"):
        sam_vision_config("vit_b", image_size=500)


def test_published_variant_configs():
    config = sam_vision_config("vit_b", image_size=512)
    assert (config.hidden_size, config.num_hidden_layers, config.global_attn_indexes) == (768, 12, [2, 5, 8, 11])
    assert config.initializer_range == 0.02


def test_base_reference_environment_and_relocation(tmp_path, tiny_checkpoint, monkeypatch):
    from nnunet_prompt.sam.checkpoint import ENV_VAR, SAMBaseReference
    _, path = tiny_checkpoint
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(SAMCheckpointError, match=ENV_VAR):
        SAMBaseReference.from_environment()
    monkeypatch.setenv(ENV_VAR, str(path))
    ref = SAMBaseReference.from_environment()
    assert (ref.hidden_size, ref.num_hidden_layers, ref.patch_size) == (32, 3, 16)
    assert ref.relocated() == ref
    moved = tmp_path / "moved.pth"
    path.rename(moved)
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(SAMCheckpointError, match="does not exist any more"):
        ref.relocated()
    monkeypatch.setenv(ENV_VAR, str(moved))
    assert ref.relocated().path == str(moved)
    other = tmp_path / "other.pth"
    save_sam_checkpoint(str(other), random_sam_image_encoder(tiny_config().__class__(
        **{**tiny_config().to_dict(), "num_hidden_layers": 2, "global_attn_indexes": [1]})))
    monkeypatch.setenv(ENV_VAR, str(other))
    with pytest.raises(SAMCheckpointError, match="not the SAM checkpoint"):
        ref.relocated()

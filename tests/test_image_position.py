"""Position channels: what nnU-Net's data loader crops, what its augmentation does to them, what a sliding-window tile
gets, and what the text network reads from them (nnunet_prompt.text.image_position)."""
import numpy as np
import pytest
import torch

from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from acvl_utils.cropping_and_padding.padding import pad_nd_image

from nnunet_prompt.text.config import ClinicalContextConfig
from nnunet_prompt.text.image_position import (NUM_POSITION_CHANNELS, PositionedCase, position_channels,
                                               protect_position_channels, tile_position)

SHAPE = (10, 20, 30)


def test_the_loader_crop_of_a_positioned_case_is_the_crop_of_the_whole_image_channels():
    data = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype(np.float32)
    whole = np.concatenate([data, position_channels(SHAPE)])
    assert whole[2:, 0, 0, 0].tolist() == [-1, -1, -1] and whole[2:, -1, -1, -1].tolist() == [1, 1, 1]
    for bbox in ([[-3, 7], [5, 25], [22, 38]], [[0, 10], [0, 20], [0, 30]], [[2, 6], [-8, 4], [1, 2]]):
        crop = crop_and_pad_nd(PositionedCase(data), bbox, 0)  # nnU-Net's data loader crop, padding included
        assert np.array_equal(crop, crop_and_pad_nd(whole, bbox, 0))


@pytest.mark.parametrize("slicer", [(slice(None), slice(0, 16), slice(4, 20), slice(14, 30)),
                                    (slice(None), 3, slice(4, 20), slice(14, 30))])  # 3d tile, 2d tile (slice 3)
def test_a_sliding_window_tile_gets_the_channels_of_its_place_in_the_padded_image(slicer):
    whole = torch.from_numpy(position_channels(SHAPE))
    padded = pad_nd_image(whole, (16, 16, 16), 'constant', {'value': 0}, False, None)  # as nnU-Net pads the image
    tile = tile_position(slicer, SHAPE, padded.shape[1:])
    assert np.array_equal(tile, padded[slicer].numpy())


def _affine_residual(channel: np.ndarray) -> float:
    """How far a (z, y, x) channel is from an affine function of the voxel index (least squares)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in channel.shape], indexing="ij"), -1).reshape(-1, 3)
    design = np.concatenate([idx, np.ones((len(idx), 1))], 1)
    coef, *_ = np.linalg.lstsq(design, channel.ravel(), rcond=None)
    return float(np.abs(design @ coef - channel.ravel()).max())


def test_nnunets_training_augmentation_moves_the_channels_but_never_changes_their_values():
    """Through nnU-Net's own training pipeline (rotation, scaling, noise, blur, brightness, contrast, low resolution,
    gamma): each position channel stays an affine function of the voxel (moved like the image), while the image
    channel gets intensity augmentation. Without the protection, noise alone breaks the affine form."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    patch = (12, 16, 16)
    big = (16, 24, 24)  # nnU-Net crops a larger region for rotation and scaling, then the spatial transform cuts the patch
    image = np.random.default_rng(1).normal(size=(1, *big)).astype(np.float32)
    sample = torch.from_numpy(np.concatenate([image, position_channels(big)]))
    seg = torch.zeros((1, *big), dtype=torch.int16)
    seg[0, 6:10, 8:16, 8:16] = 1

    def pipeline(protected: bool):
        p = nnUNetTrainer.get_training_transforms(patch, (-0.5, 0.5), None, None, False, foreground_labels=[1])
        return protect_position_channels(p) if protected else p

    torch.manual_seed(0)
    residuals, noisy = [], []
    for _ in range(12):
        out = pipeline(True)(image=sample.clone(), segmentation=seg.clone())["image"]
        assert out.shape == (1 + NUM_POSITION_CHANNELS, *patch)
        inner = out[1:, 2:-2, 2:-2, 2:-2].numpy()  # away from the zero padding a rotation may bring in
        residuals += [_affine_residual(c) for c in inner if np.ptp(c) > 0]
        raw = pipeline(False)(image=sample.clone(), segmentation=seg.clone())["image"][1:, 2:-2, 2:-2, 2:-2].numpy()
        noisy += [_affine_residual(c) for c in raw]
    assert max(residuals) < 1e-3, max(residuals)
    assert max(noisy) > 1e-2  # the unprotected channels were changed: the check above can fail


def test_legacy_records_keep_patch_relative_positions_and_new_ones_read_three_channels():
    old = ClinicalContextConfig.from_dict({"kind": "categories", "num_groups": 4, "vectors_per_group": 8,
                                           "category_dim": 16, "text_model": None})
    assert old.position == "patch" and old.position_channels == 0
    new = ClinicalContextConfig(kind="categories", category_dim=16)
    assert ClinicalContextConfig.from_dict(new.to_dict()).position_channels == NUM_POSITION_CHANNELS


def _network(position_channels: int):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_prompt.text.text_unet import TextConditionedUNet
    torch.manual_seed(0)
    cfg = ClinicalContextConfig(kind="categories", category_dim=16)
    unet = PlainConvUNet(1 + position_channels, 2, [4, 8], torch.nn.Conv3d, 3, [1, 2], 1, 2, 1, True,
                         torch.nn.InstanceNorm3d, {"affine": True}, nonlin=torch.nn.LeakyReLU)
    return TextConditionedUNet(unet, cfg.build_encoder(), cfg.entry_key, 1, position_channels).eval()


def test_the_network_reads_where_the_patch_lies():
    net = _network(NUM_POSITION_CHANNELS)
    img = torch.randn(1, 1, 8, 8, 8)
    left = torch.from_numpy(position_channels((8, 8, 24))[:, :, :, 16:])[None]
    right = torch.from_numpy(position_channels((8, 8, 24))[:, :, :, :8])[None]
    entry = [{"fields": {"laterality": "left"}}]
    with torch.no_grad(), net.conditioned_on(entry):
        out_left, out_right = net(torch.cat([img, left], 1)), net(torch.cat([img, right], 1))
        assert not torch.allclose(out_left, out_right)  # same image, another place in the patient
        # the fusions see the position too, not only the encoder's first convolution
        position = net.fusions[0].position.weight
        with torch.no_grad():
            position.zero_()
        assert not torch.allclose(net(torch.cat([img, left], 1)), out_left)
        with pytest.raises(RuntimeError, match="position channels"):
            net(img)


def test_position_maps_are_affine_in_the_position_with_coefficients_the_text_chooses():
    from nnunet_prompt.text.position_map import TextPositionMap
    torch.manual_seed(0)
    maps = TextPositionMap(context_dim=16, position_dims=NUM_POSITION_CHANNELS, num_maps=5)
    position = torch.from_numpy(position_channels((4, 6, 10)))[None].expand(2, -1, -1, -1, -1)
    context = torch.randn(2, 3, 16)
    m = maps(context, position)
    assert m.shape == (2, 5, 4, 6, 10)
    # affine along x: constant second differences of zero; bounded by the tanh'd coefficients (|p| <= 1)
    assert torch.allclose(m[..., 2:] - 2 * m[..., 1:-1] + m[..., :-2], torch.zeros(()), atol=1e-5)
    assert m.abs().max() <= NUM_POSITION_CHANNELS + 1
    assert not torch.allclose(m[0], m[1])  # another text, other maps
    assert torch.allclose(maps(context[:1], position[:1]), m[:1], atol=1e-6)  # a sample's maps are its own


def test_the_network_appends_its_position_maps_and_legacy_records_have_none():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_prompt.text.text_unet import TextConditionedUNet
    cfg = ClinicalContextConfig(kind="categories", category_dim=16, position_maps=8)
    assert cfg.network_input_channels == NUM_POSITION_CHANNELS + cfg.position_maps
    old = ClinicalContextConfig.from_dict({"kind": "categories", "category_dim": 16, "text_model": None})
    assert old.position_maps == 0 and old.network_input_channels == 0
    torch.manual_seed(0)
    unet = PlainConvUNet(1 + cfg.network_input_channels, 2, [4, 8], torch.nn.Conv3d, 3, [1, 2], 1, 2, 1, True,
                         torch.nn.InstanceNorm3d, {"affine": True}, nonlin=torch.nn.LeakyReLU)
    net = TextConditionedUNet(unet, cfg.build_encoder(), cfg.entry_key, 1, cfg.position_channels,
                              cfg.position_maps).eval()
    seen = []
    net.unet.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.cat([torch.randn(1, 1, 8, 8, 8), torch.from_numpy(position_channels((8, 8, 8)))[None]], 1)
    with torch.no_grad():
        with net.conditioned_on([{"fields": {"laterality": "left"}}]):
            left = net(x)
        with net.conditioned_on([{"fields": {"laterality": "right"}}]):
            right = net(x)
    assert seen[0].shape[1] == x.shape[1] + cfg.position_maps
    assert torch.equal(seen[0][:, :x.shape[1]], x)  # the case's channels unchanged, the maps after them
    assert not torch.allclose(seen[0][:, x.shape[1]:], seen[1][:, x.shape[1]:])  # the text steers the maps
    assert not torch.allclose(left, right)


def test_laterality_contrast_maps_follow_a_swap_of_the_sides_exactly():
    """The slopes read the context minus that of the side-swapped text: swapping left and right negates them, the
    constant stays, and a text that names no side gets no slope at all (nnunet_prompt.text.position_map)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_prompt.text.text_unet import TextConditionedUNet
    cfg = ClinicalContextConfig(kind="categories", category_dim=16, position_maps=4, laterality_contrast=True)
    assert not ClinicalContextConfig.from_dict({"kind": "categories", "text_model": None}).laterality_contrast
    torch.manual_seed(0)
    unet = PlainConvUNet(1 + cfg.network_input_channels, 2, [4, 8], torch.nn.Conv3d, 3, [1, 2], 1, 2, 1, True,
                         torch.nn.InstanceNorm3d, {"affine": True}, nonlin=torch.nn.LeakyReLU)
    net = TextConditionedUNet(unet, cfg.build_encoder(), cfg.entry_key, 1, cfg.position_channels, cfg.position_maps,
                              cfg.laterality_contrast).eval()
    seen = []
    net.unet.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 1 + NUM_POSITION_CHANNELS:]))
    x = torch.cat([torch.randn(1, 1, 8, 8, 8), torch.from_numpy(position_channels((8, 8, 8)))[None]], 1)
    entries = [{"laterality": "left", "N": "N1"}, {"laterality": "right", "N": "N1"}, {"N": "N1"}, {"N": "N0"}]
    with torch.no_grad():
        for e in entries:
            with net.conditioned_on([{"fields": e}]):
                net(x)
    left, right, no_side, other_n = seen

    def slope_and_constant(m):  # maps are affine in the position channels: read back a_x and b at the centre
        return m[..., 1:] - m[..., :-1], m.mean((2, 3, 4))
    (a_left, b_left), (a_right, b_right) = slope_and_constant(left), slope_and_constant(right)
    assert a_left.abs().max() > 1e-3
    assert torch.allclose(a_left, -a_right, atol=1e-6) and torch.allclose(b_left, b_right, atol=1e-6)
    assert torch.allclose(no_side, no_side[..., :1, :1, :1].expand_as(no_side), atol=1e-6)  # flat: no slope
    assert not torch.allclose(no_side, other_n)  # the constant still reads the rest of the text
    with pytest.raises(RuntimeError, match="side-swapped"):
        net.position_map(torch.randn(1, 2, 16), x[:, 1:])

"""Where a patch lies in the whole image: three position channels, the same in training and at inference.

On a CT, nnU-Net's planned patch covers a fraction of the body and a sliding window moves it across, so a
patch-relative coordinate cannot say whether a patch is on the patient's left or right, which is what
"left-sided tumour" in the text asks for. A text model that reads position therefore gets, next to the image
channels, one channel per array axis holding each voxel's position in the whole preprocessed image, linear
from -1 (first voxel) to +1 (last voxel). Outside the image (nnU-Net's padding) they are 0, as the image is.

Why whole-image coordinates of nnU-Net's preprocessed array, and not world (patient) coordinates: they are a
function of the array alone, so training (``PositionedDataset``: computed for the crop nnU-Net's data loader
takes, then moved by its spatial augmentation like any image channel) and the sliding window (each tile's
slicer, ``PositionChannelsPredictor``) produce them identically. nnU-Net crops to the nonzero region before
that, so for MR the range spans the body; for CT (air is nonzero) the field of view, in which the patient
lies centred. Like nnU-Net itself, this assumes the dataset's images share one orientation (our converters
write LPS); a dataset mixing orientations must be resampled to one first.

Intensity augmentation (noise, brightness, contrast, gamma, blur, low resolution) must not touch them:
``protect_position_channels`` lifts them out of the image after nnU-Net's spatial transform and puts them
back at the end of the pipeline.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

NUM_POSITION_CHANNELS = 3  # nnU-Net's preprocessed arrays are (C, z, y, x), for 2d configurations too
STASH_KEY = "nnunet_prompt_position"


def axis_positions(n: int, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
    """Positions of voxels start..stop-1 of an axis of n voxels, linear from -1 (voxel 0) to +1 (voxel n-1)."""
    stop = n if stop is None else stop
    i = np.arange(start, stop, dtype=np.float32)
    return i * (2.0 / (n - 1)) - 1.0 if n > 1 else np.zeros_like(i)


def position_channels(image_shape: Sequence[int], region: Optional[Sequence[slice]] = None) -> np.ndarray:
    """(3, *region shape) float32: the position channels of ``region`` (in-bounds slices, step 1) of an image
    whose spatial shape is ``image_shape``; the whole image without ``region``."""
    region = region or [slice(0, n) for n in image_shape]
    axes = [axis_positions(int(n), *s.indices(int(n))[:2]) for n, s in zip(image_shape, region)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), 0)


class PositionedCase:
    """A case array (C, *spatial) seen as (C + 3, *spatial), its position channels last. Only the region that
    nnU-Net's data loader crops is read and computed (``crop_and_pad_nd`` indexes with one slice per axis), so a
    CT-sized blosc2 case is not decompressed or expanded whole."""

    def __init__(self, data):
        self.data = data
        self.shape = (data.shape[0] + NUM_POSITION_CHANNELS, *data.shape[1:])
        self.dtype = np.float32

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        channels, spatial = index[0], list(index[1:])
        spatial += [slice(None)] * (len(self.shape) - 1 - len(spatial))
        if any(not isinstance(s, slice) or s.step not in (None, 1) for s in spatial):
            raise IndexError("PositionedCase takes one step-1 slice per axis (what nnU-Net's crop uses)")
        spatial = [slice(*s.indices(n)[:2]) for s, n in zip(spatial, self.shape[1:])]
        image = np.asarray(self.data[(slice(None), *spatial)], dtype=np.float32)
        both = np.concatenate([image, position_channels(self.shape[1:], spatial)], 0)
        return both[channels]


class PositionedDataset:
    """nnU-Net dataset (blosc2 or numpy) whose cases carry the position channels after the image channels."""

    def __init__(self, dataset):
        self.dataset = dataset

    def load_case(self, identifier):
        data, seg, seg_prev, properties = self.dataset.load_case(identifier)
        return PositionedCase(data), seg, seg_prev, properties

    def __getattr__(self, name):
        if name == "dataset":  # not set yet (unpickling in a data augmentation worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self):
        return len(self.dataset)


class StashPositionChannels(BasicTransform):
    """Move the last 3 image channels aside, where intensity transforms do not see them."""

    def apply(self, data_dict, **params):
        image = data_dict["image"]
        data_dict[STASH_KEY] = image[-NUM_POSITION_CHANNELS:]
        data_dict["image"] = image[:-NUM_POSITION_CHANNELS]
        return data_dict


class RestorePositionChannels(BasicTransform):
    def apply(self, data_dict, **params):
        data_dict["image"] = torch.cat([data_dict["image"], data_dict.pop(STASH_KEY).to(data_dict["image"].dtype)], 0)
        return data_dict


def protect_position_channels(pipeline):
    """nnU-Net's training pipeline (a ComposeTransforms) with the position channels lifted out after its spatial
    transform (and the 2D/3D conversion around it) and put back at the end."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform
    transforms: List = list(pipeline.transforms)
    spatial = [i for i, t in enumerate(transforms) if isinstance(t, SpatialTransform)]
    if not spatial:
        raise RuntimeError("nnU-Net's training transforms have no SpatialTransform: cannot place the position "
                           "channels (nnunet-prompt expects nnU-Net 2.8's pipeline).")
    after = spatial[0] + 1
    if after < len(transforms) and isinstance(transforms[after], Convert2DTo3DTransform):
        after += 1
    transforms = transforms[:after] + [StashPositionChannels()] + transforms[after:] + [RestorePositionChannels()]
    pipeline.transforms = transforms
    return pipeline


def tile_position(padded_slicer, image_shape: Sequence[int], padded_shape: Sequence[int]) -> np.ndarray:
    """Position channels of one sliding-window tile. nnU-Net pads the image to at least the patch size, the
    larger half after (``pad_nd_image``); the tile's slicer indexes that padded image; padding gets 0."""
    spatial = list(padded_slicer[-len(image_shape):])
    squeeze = [i for i, s in enumerate(spatial) if not isinstance(s, slice)]  # 2d configurations: the slice index
    spatial = [slice(int(s), int(s) + 1) if not isinstance(s, slice) else s for s in spatial]
    out = np.zeros((NUM_POSITION_CHANNELS, *[s.stop - s.start for s in spatial]), np.float32)
    inside, target = [], []
    for s, n, p in zip(spatial, image_shape, padded_shape):
        below = (int(p) - int(n)) // 2
        lo, hi = max(s.start - below, 0), min(s.stop - below, int(n))
        inside.append(slice(lo, hi))
        target.append(slice(lo + below - s.start, hi + below - s.start))
    if all(t.stop > t.start for t in target):
        out[(slice(None), *target)] = position_channels(image_shape, inside)
    return out.squeeze(tuple(1 + i for i in squeeze)) if squeeze else out

"""Training CT-SAM3D's cross-patch prompt (CPP) inside nnU-Net's train_step (Algorithm 1, lines 4-6).

Patch pairs: U and V are two overlapping crops of the patch nnU-Net's data loader already delivered
(after its augmentation), not two separately loaded patches. Per sample a direction among the 26
neighbours is drawn; along an axis that the direction moves, U and V are crops of about 2/3 of the patch,
one at each end, so they overlap by half a crop (the half-patch stride of the neighbours at inference);
along the other axes both take the same crop. Why crops of the loaded patch:

* nnU-Net's loader, its foreground oversampling and its augmentation stay untouched, and U and V share
  one augmentation, so they are spatially consistent (two independently augmented patches are not);
* U_p and V_p are crops of the prediction nnU-Net's train_step computes anyway for the whole patch, so
  the CPP costs only its own small network (Algorithm 1 segments U and V separately; here the whole
  patch, which contains both, is segmented once and L_local is nnU-Net's ordinary loss on it);
* the price: the CPP sees crops of 2/3 of the patch in training and whole patches at inference. It is
  fully convolutional and its target (a Gaussian of fixed width in mm) does not depend on the crop size.

The predictions enter the CPP detached: L_cross trains the CPP head only, the segmentation network learns
from nnU-Net's loss alone (in Algorithm 1 the gradient of L_cross may also reach S through U_p; we keep the
CPP a reader of the mask, not a teacher of it). The CPP head is a submodule of the network, so it is
optimised, checkpointed (``--c``) and, since it runs on every step, gets a gradient on every step (DDP).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from nnunet_prompt.networks.cross_patch_prompt import cross_patch_loss
from nnunet_prompt.prompts.regions import neighbour_directions

# (U start, V start) per axis, and the crop size per axis
PairCrops = Tuple[Tuple[int, ...], Tuple[int, ...]]


def pair_geometry(patch_size: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Per axis the crop size c (about 2/3 of the patch) and the shift o = patch - c between U and V along an
    axis the pair moves on (o is about c / 2: the crops overlap by half). o = 0: the axis is too short to move."""
    crop, shift = [], []
    for p in patch_size:
        c = max(1, int(round(2 * int(p) / 3)))
        crop.append(c)
        shift.append(int(p) - c if int(p) - c >= 1 and 2 * c - int(p) >= 1 else 0)
    return tuple(crop), tuple(shift)


def sample_pairs(batch_size: int, patch_size: Sequence[int], generator: torch.Generator) -> Tuple[List[PairCrops], Tuple[int, ...]]:
    """Per sample (U start, V start) in the patch, and the common crop size; U and V overlap and differ
    (a random one of the 26 neighbour directions, restricted to the axes long enough to move)."""
    crop, shift = pair_geometry(patch_size)
    movable = [d for d in neighbour_directions(len(patch_size)) if all(s > 0 or v == 0 for v, s in zip(d, shift))]
    if not movable:
        raise ValueError(f"Patch size {tuple(patch_size)} is too small for cross-patch pairs (needs >= 3 voxels on an axis).")
    pairs = []
    for _ in range(batch_size):
        d = movable[int(torch.randint(len(movable), (1,), generator=generator))]
        u, v = [], []
        for a, (step, o) in enumerate(zip(d, shift)):
            if step == 0:
                start = int(torch.randint(o + 1, (1,), generator=generator))
                u.append(start), v.append(start)
            else:
                u.append(0 if step > 0 else o), v.append(o if step > 0 else 0)
        pairs.append((tuple(u), tuple(v)))
    return pairs, crop


def _crop(x: torch.Tensor, starts: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Crop the trailing spatial axes of x."""
    return x[(..., *[slice(s, s + c) for s, c in zip(starts, size)])]


@dataclass
class CrossPatchStep:
    """What the loss needs of the current training step besides nnU-Net's (output, target)."""
    cross_patch: nn.Module          # the network's CrossPatchPromptNet
    image: torch.Tensor             # (B, C_img, *patch) the batch's image channels, on the training device
    pairs: List[PairCrops]
    crop: Tuple[int, ...]
    spacing: Sequence[float]
    sigma_mm: float
    weight: float = 1.0


class CrossPatchLoss(nn.Module):
    """nnU-Net's loss (deep supervision included) + weight * L_cross while a training step's ``step`` is set;
    nnU-Net's loss alone otherwise (validation steps). Keeps the mean L_cross since ``reset_log``."""

    def __init__(self, segmentation_loss: nn.Module):
        super().__init__()
        self.segmentation_loss = segmentation_loss
        self.step: Optional[CrossPatchStep] = None
        self.reset_log()

    def reset_log(self):
        self._sum, self._count = None, 0

    def mean_cross_loss(self) -> Optional[float]:
        return None if not self._count else float(self._sum) / self._count

    def forward(self, output, target):
        loss = self.segmentation_loss(output, target)
        st = self.step
        if st is None:
            return loss
        logits = output[0] if isinstance(output, (list, tuple)) else output
        full = target[0] if isinstance(target, (list, tuple)) else target
        prob = torch.softmax(logits.float(), 1)[:, 1:2].detach()  # foreground probability, see module doc
        obj = full[:, 0] == 1
        u_img, v_img, u_p, v_p, u_gt, v_gt = [], [], [], [], [], []
        for i, (u, v) in enumerate(st.pairs):
            u_img.append(_crop(st.image[i:i + 1], u, st.crop)), v_img.append(_crop(st.image[i:i + 1], v, st.crop))
            u_p.append(_crop(prob[i:i + 1], u, st.crop)), v_p.append(_crop(prob[i:i + 1], v, st.crop))
            u_gt.append(_crop(obj[i:i + 1], u, st.crop)), v_gt.append(_crop(obj[i:i + 1], v, st.crop))
        cross = cross_patch_loss(st.cross_patch, torch.cat(u_img), torch.cat(u_p), torch.cat(u_gt), torch.cat(v_img),
                                 torch.cat(v_p), torch.cat(v_gt), st.spacing, st.sigma_mm)
        self._sum = cross.detach() if self._sum is None else self._sum + cross.detach()  # no GPU sync per step
        self._count += 1
        return loss + st.weight * cross

"""Cross-patch propagation at inference (CT-SAM3D, Fig. 2D): one click segments an object larger
than a patch.

From a segmented patch U, the model's cross-patch prompt head (``CrossPatchPromptNet``, trained by
PSAPTrainer_CPP) looks at each of U's 26 neighbouring patches V (U shifted by half a patch along each
axis: -1, 0 or +1 times; clipped to the image) and predicts a click heatmap for V from (U, U's foreground
probability, V). Where the heatmap's maximum reaches ``threshold``, V gets a positive click there, is
segmented with it, merged into the result, and becomes a U itself. This repeats until no new patch is
proposed or ``max_patches`` patches are segmented.

Choices, with reasons:

* Half-patch stride: neighbours overlap U by half, as U and V overlap in training; a stride of a whole
  patch would leave the CPP nothing in common between U and V.
* ``require_contact`` (default on): a neighbour is only considered if U's object touches U's side(s)
  facing it. An object that stays inside U on that side has nothing new in V (what lies in V's overlap
  with U is segmented already); this saves the CPP pass and keeps a weakly trained head from seeding
  patches far from the object. Not in CT-SAM3D.
* Merging: a proposed patch can only add to the result (the voxel-wise maximum of the object logits),
  because its click is positive: it must not erase what the clicked patch found in the overlap.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch

from nnunet_prompt.prompts.regions import Region, neighbour_regions, region_slices


class NoCrossPatchHead(ValueError):
    pass


def require_cross_patch_head(network: torch.nn.Module, model_folder: str) -> torch.nn.Module:
    head = getattr(network, "cross_patch", None)
    if head is None:
        raise NoCrossPatchHead(
            f"Model '{model_folder}' has no cross-patch prompt (CPP) head: cross-patch propagation needs a model trained "
            f"with PSAPTrainer_CPP (e.g. nnUNetv2_train DATASET 3d_fullres 0 -tr PSAPTrainer_CPP). Leave out "
            f"--cross-patch / cross_patch=True for this model.")
    return head


def touches_sides(obj: torch.Tensor, direction: Sequence[int]) -> bool:
    """Whether the object (a boolean patch) touches every side of the patch that ``direction`` points to."""
    for axis, step in enumerate(direction):
        if step != 0:
            face = obj.select(axis, -1 if step > 0 else 0)
            if not bool(face.any()):
                return False
    return True


@dataclass
class Propagation:
    regions: List[Region] = field(default_factory=list)      # segmented patches, the clicked one first
    clicks: List[Tuple[int, ...]] = field(default_factory=list)  # proposed positive clicks (one per proposed patch)
    peaks: List[float] = field(default_factory=list)           # heatmap maximum that proposed each click


class CrossPatchPropagator:
    def __init__(self, cross_patch: torch.nn.Module, threshold: float = 0.5, max_patches: int = 27,
                 require_contact: bool = True, device: torch.device = torch.device("cpu")):
        if not 0 <= threshold <= 1:
            raise ValueError(f"The cross-patch threshold is a heatmap value in [0, 1], got {threshold}.")
        if max_patches < 1:
            raise ValueError(f"max_patches must be >= 1, got {max_patches}.")
        self.cross_patch = cross_patch
        self.threshold = threshold
        self.max_patches = max_patches
        self.require_contact = require_contact
        self.device = device

    @torch.no_grad()
    def heatmaps(self, image: torch.Tensor, u: Region, u_probability: torch.Tensor, candidates: List[Region]) -> torch.Tensor:
        """CPP heatmaps (K, *patch) for the candidate neighbours of U, in one batched pass."""
        k = len(candidates)
        u_img = image[(slice(None), *region_slices(u))][None].expand(k, *[-1] * image.ndim)
        u_p = u_probability[None, None].expand(k, 1, *[-1] * u_probability.ndim)
        v_img = torch.stack([image[(slice(None), *region_slices(v))] for v in candidates])
        dev = self.device
        return self.cross_patch(u_img.float().to(dev), u_p.float().to(dev), v_img.float().to(dev))[:, 0].float().cpu()

    def run(self, image: torch.Tensor, logits: torch.Tensor, first: Region,
            segment: Callable[[Region, Tuple[int, ...]], torch.Tensor]) -> Propagation:
        """image: (C, *S) preprocessed; logits: (*S) object-vs-background logits, already holding the clicked patch
        ``first``'s result, updated in place; segment(region, click) -> that region's object logits with the
        proposed positive click added to the prompts."""
        result = Propagation(regions=[first])
        done = {first[0]}
        queue = deque([first])
        while queue and len(result.regions) < self.max_patches:
            u = queue.popleft()
            obj = logits[region_slices(u)] > 0
            if not bool(obj.any()):
                continue
            candidates = [v for d, v in neighbour_regions(u, logits.shape)
                          if v[0] not in done and (not self.require_contact or touches_sides(obj, d))]
            if not candidates:
                continue
            heat = self.heatmaps(image, u, torch.sigmoid(logits[region_slices(u)].float()), candidates)
            for v, h in zip(candidates, heat):
                if len(result.regions) >= self.max_patches:
                    break
                peak = float(h.max())
                if v[0] in done or peak < self.threshold:
                    continue
                idx = np.unravel_index(int(torch.argmax(h)), tuple(h.shape))
                click = tuple(int(a + i) for a, i in zip(v[0], idx))
                sl = region_slices(v)
                logits[sl] = torch.maximum(logits[sl], segment(v, click).to(logits.dtype))
                done.add(v[0])
                result.regions.append(v)
                result.clicks.append(click)
                result.peaks.append(peak)
                queue.append(v)
        return result



"""Interaction simulation from the target, on the training device, deterministic under a seed.

Everything here is batched torch on whatever device the target lives on (GPU in training), so a
simulated user never forces a round trip to the CPU. Used by PromptTrainer during training and
by its final validation. The evaluation protocols (``interactive-eval``) use the same refinement rule with the
distance in millimetres instead (``nnunet_prompt.interaction.user_prompts.next_click_mm``, scipy on the CPU).

* Initial prompt (round 1, the MedSAM study and CT-SAM3D): per sample one of {clicks only, box only, box + clicks},
  drawn at random. Clicks are random voxels of the target; the box is the target's bounding box,
  each side widened by a random margin of 0-20 mm. ``"slice_boxes"`` (not among the defaults; the MedSAM
  study's "nnU-Net w/ box") gives instead one such box per object per slice along axis 0
  (``nnunet_prompt.interaction.slice_boxes``).
* Refinement rounds: the next click goes to the voxel farthest from the boundary of the largest error
  region (false negatives give a positive click, false positives a negative one), and the previous
  prediction becomes the mask prompt.

Connected components and the distance to a region's boundary are computed with max-pooling
iterations (no torch/scipy function does either on the GPU). The distance is the chessboard distance
in voxels of the patch; the patch border counts as a boundary, so clicks stay off the patch edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_prompt.prompts.encoding import BOX, MASK, NEG, POS, PromptEncoding, ball_radius_voxels, draw_balls

INITIAL_PROMPT_TYPES = ("clicks", "box", "box+clicks", "slice_boxes")
# what a policy draws from unless told otherwise; "slice_boxes" is chosen explicitly (BoxPromptTrainer)
DEFAULT_INITIAL_TYPES = ("clicks", "box", "box+clicks")


@dataclass(frozen=True)
class SimulationPolicy:
    """How the simulated user behaves. Defaults follow CT-SAM3D and the MedSAM study."""
    num_rounds: int = 5                      # CT-SAM3D: 5 interaction rounds per batch
    initial_types: Tuple[str, ...] = DEFAULT_INITIAL_TYPES
    max_initial_clicks: int = 3              # 1..max random clicks in the target
    box_margin_mm: Tuple[float, float] = (0.0, 20.0)  # the MedSAM study: bounding box widened by 0-20 mm

    def __post_init__(self):
        unknown = set(self.initial_types) - set(INITIAL_PROMPT_TYPES)
        if unknown or not self.initial_types:
            raise ValueError(f"initial_types must be a non-empty subset of {INITIAL_PROMPT_TYPES}, got {self.initial_types}")
        if self.num_rounds < 1:
            raise ValueError("num_rounds must be >= 1")


def _rand(generator: torch.Generator, n: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device)


def _randint(generator: torch.Generator, high: int) -> int:
    return int(torch.randint(high, (1,), generator=generator, device=generator.device).item())


def random_voxels(mask: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n random voxel coordinates (with replacement) of a 3D boolean mask, shape (n, 3) float."""
    idx = torch.nonzero(mask)
    pick = torch.randint(idx.shape[0], (n,), generator=generator, device=generator.device).to(idx.device)
    return idx[pick].float()


def _max_pool_3x3x3(x: torch.Tensor) -> torch.Tensor:
    # separable: three 1D max-pools equal one 3x3x3 max-pool and cost less
    x = F.max_pool3d(x, (3, 1, 1), stride=1, padding=(1, 0, 0))
    x = F.max_pool3d(x, (1, 3, 1), stride=1, padding=(0, 1, 0))
    return F.max_pool3d(x, (1, 1, 3), stride=1, padding=(0, 0, 1))


def label_components(masks: torch.Tensor, check_every: int = 2) -> torch.Tensor:
    """26-connected components of a batch of 3D boolean masks (N, X, Y, Z) -> int labels (0 = background),
    unique across the batch.

    Every voxel starts with its own flat index + 1 as label; labels spread by 3x3x3 max-pooling inside
    the mask, and pointer jumping (a voxel takes the label of the voxel its label points to, which lies
    in the same component and only ever holds a larger label) shortens long chains, so convergence
    takes far fewer passes than the component's diameter."""
    n = masks.numel()
    ids = torch.arange(1, n + 1, device=masks.device, dtype=torch.float32 if n < 2 ** 24 else torch.float64)
    m = masks[:, None].to(ids.dtype)
    labels = ids.view(masks.shape)[:, None] * m
    it = 0
    while True:
        new = _max_pool_3x3x3(labels) * m
        flat = new.view(-1)
        inside = flat > 0
        flat[inside] = flat[flat[inside].long() - 1]  # pointer jumping
        it += 1
        if it % check_every == 0 and torch.equal(new, labels):
            return new[:, 0].long()
        labels = new


def boundary_depth(masks: torch.Tensor) -> torch.Tensor:
    """Chessboard distance (in voxels, >= 1 inside) of each voxel to the mask's boundary or the patch
    border, for a batch of 3D boolean masks (N, X, Y, Z)."""
    m = masks[:, None].float()
    depth = torch.zeros_like(m)
    while bool(m.any()):
        depth += m
        # erosion = min-pool; zero padding makes the patch border a boundary
        m = -_max_pool_3x3x3(-F.pad(m, (1, 1, 1, 1, 1, 1), value=0.0))[..., 1:-1, 1:-1, 1:-1]
    return depth[:, 0]


class InteractionSimulator:
    """Simulates a user on the preprocessed grid of a training batch."""

    def __init__(self, encoding: PromptEncoding, spacing: Sequence[float], policy: SimulationPolicy = SimulationPolicy(),
                 seed: int = 0, device: torch.device = torch.device("cpu")):
        self.encoding = encoding
        self.policy = policy
        self.spacing = np.asarray(spacing, dtype=float)
        self.radius_vox = ball_radius_voxels(encoding.click_radius_mm, spacing)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(seed))

    def _choose_initial_type(self) -> str:
        return self.policy.initial_types[_randint(self.generator, len(self.policy.initial_types))]

    def initial_prompts(self, target: torch.Tensor, prompt_types: Optional[Sequence[str]] = None) -> torch.Tensor:
        """target: (B, X, Y, Z) bool on the training device -> prompt channels (B, C, X, Y, Z), no mask.
        A sample with an empty target gets no prompt (all zeros)."""
        b = target.shape[0]
        out = torch.zeros((b, self.encoding.num_channels, *target.shape[1:]), device=target.device)
        per_slice = []
        for i in range(b):
            kind = prompt_types[i] if prompt_types is not None else self._choose_initial_type()
            if kind not in INITIAL_PROMPT_TYPES:
                raise ValueError(f"unknown initial prompt type {kind!r}; known: {INITIAL_PROMPT_TYPES}")
            if not bool(target[i].any()):
                continue
            if kind == "slice_boxes":
                per_slice.append(i)  # all of the batch's slices at once, below
                continue
            if "clicks" in kind:
                n = 1 + _randint(self.generator, self.policy.max_initial_clicks)
                draw_balls(out[i, POS], random_voxels(target[i], n, self.generator), self.radius_vox)
            if "box" in kind:
                lo, hi = self.widened_bbox(target[i])
                out[i, BOX, lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = 1
        if per_slice:
            from nnunet_prompt.interaction.slice_boxes import slice_box_channel
            out[per_slice, BOX] = slice_box_channel(target[per_slice], self.spacing, self.policy.box_margin_mm,
                                                    self.generator).to(out.dtype)
        return out

    def widened_bbox(self, target: torch.Tensor) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        idx = torch.nonzero(target)
        lo, hi = idx.min(0).values.cpu().numpy(), idx.max(0).values.cpu().numpy()
        m_lo, m_hi = self.policy.box_margin_mm
        margins = (m_lo + (m_hi - m_lo) * _rand(self.generator, 6).cpu().numpy()).reshape(2, 3) / self.spacing
        lo = np.maximum(lo - np.round(margins[0]).astype(int), 0)
        hi = np.minimum(hi + np.round(margins[1]).astype(int), np.asarray(target.shape) - 1)
        return tuple(int(v) for v in lo), tuple(int(v) for v in hi)

    def next_clicks(self, prediction: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Where the simulated user clicks next. prediction, target: (B, X, Y, Z) bool.
        Returns (coords (B, 3) long, kind (B,) long with 1 = positive, 0 = negative, -1 = no error)."""
        b = target.shape[0]
        errors = torch.cat([target & ~prediction, prediction & ~target])  # (2B, ...): false negatives, then positives
        labels = label_components(errors)
        flat = labels.view(2 * b, -1)
        coords = torch.zeros((b, 3), dtype=torch.long, device=target.device)
        kind = torch.full((b,), -1, dtype=torch.long, device=target.device)
        chosen = torch.zeros_like(target)
        for i in range(b):
            best_size, best = 0, None
            for j, sign in ((i, 1), (b + i, 0)):
                lab = flat[j][flat[j] > 0]
                if lab.numel() == 0:
                    continue
                values, counts = torch.unique(lab, return_counts=True)
                k = int(torch.argmax(counts))
                if int(counts[k]) > best_size:
                    best_size, best = int(counts[k]), (j, int(values[k]), sign)
            if best is not None:
                j, value, sign = best
                chosen[i] = labels[j] == value
                kind[i] = sign
        depth = boundary_depth(chosen)
        # random tie-break among the deepest voxels, reproducible under the generator
        noise = torch.rand(depth.shape, generator=self.generator, device=self.generator.device).to(depth.device)
        score = torch.where(chosen, depth + 0.5 * noise, torch.zeros_like(depth))
        flat_idx = score.view(b, -1).argmax(1)
        spatial = target.shape[1:]
        coords[:, 0] = flat_idx // (spatial[1] * spatial[2])
        coords[:, 1] = (flat_idx // spatial[2]) % spatial[1]
        coords[:, 2] = flat_idx % spatial[2]
        return coords, kind

    def refine(self, prompts: torch.Tensor, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One refinement round: add a click at the largest error and feed the prediction back as mask."""
        coords, kind = self.next_clicks(prediction, target)
        prompts = prompts.clone()
        for i in range(target.shape[0]):
            if int(kind[i]) < 0:
                continue
            ch = POS if int(kind[i]) == 1 else NEG
            draw_balls(prompts[i, ch], coords[i:i + 1], self.radius_vox)
        prompts[:, MASK] = prediction.float()
        return prompts

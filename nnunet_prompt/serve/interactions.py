"""How nnInteractive's interactions map onto a prompt model of ours, and what a model advertises.

Axes: the protocol's image is ``[C, a0, a1, a2]`` and its coordinates are indices of ``a0, a1, a2``; we read
those axes as nnU-Net's array axes of a SimpleITK image, (z, y, x), with ``image_properties["spacing"]`` in the
same order (as nnU-Net's reader gives it). The table is docs/reference/interactions.md.

=================  =====================================================================================
interaction        our prompt
=================  =====================================================================================
point              a click (positive / negative click channel)
bbox (2D or 3D)    our box (box channel); a 2D box is the box on its slice. Positive only: no model of ours
                   has a negative box channel
scribble           clicks along the stroke, one per click radius (the click channels)
lasso              the filled outline on its slice in the box channel (positive only, as boxes)
initial_seg        the mask prompt: the contour to correct becomes the current result (previous-mask
                   channel); the clicks that follow refine it
autozoom on/off    region growth on/off (the region grows while the object touches its inner sides)
=================  =====================================================================================

Extension (not in nnInteractive's protocol): models of text and prompts (TextAndPromptTrainer) take clinical text at
``POST TEXT_PATH`` with ``{"text": "...", "label": optional name or value}``; its reply is a prediction's reply.
The capabilities document names it under ``"nnunet_prompt_extensions"``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_prompt.prompts.encoding import BOX, MASK, NEG, POS

TEXT_PATH = "/nnunet_prompt/set_text"


class InteractionRefused(ValueError):
    """A request the served model cannot take or that is malformed (HTTP 400)."""


def model_capabilities(predictor) -> Dict[str, bool]:
    """Which interactions the loaded model takes, from what its trainer's simulated user gave it in training."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
    ensure_trainer_path_registered()
    trainer = recursive_find_trainer_class_by_name(predictor.trainer_name)
    policy = getattr(trainer, "simulation_policy", None)
    encoding = predictor.prompt_encoding
    if encoding is None:
        raise InteractionRefused(f"{predictor.trainer_name} takes no spatial prompts (a text-conditioned or plain "
                                 f"model): the nnInteractive protocol has nothing to give it.")
    boxes = policy is None or any("box" in t for t in policy.initial_types)
    clicks = policy is None or policy.num_rounds > 1 or any("click" in t for t in policy.initial_types)
    # what the network reads (a box-only model ignores clicks and the previous mask)
    channels = set(getattr(predictor, "prompt_channels_used", None) or encoding.channels)
    clicks = clicks and {"positive_clicks", "negative_clicks"} <= channels
    boxes = boxes and "box" in channels
    return {"points": clicks, "scribble": clicks, "bbox2d": boxes, "bbox3d": boxes, "lasso": boxes,
            "initial_seg": "previous_mask" in channels}


def capabilities_document(predictor, supported: Dict[str, bool], undo: bool, autozoom: bool) -> dict:
    import nnunet_prompt
    # the prompt channels follow the image channels and, for models that read text, the position channels
    n_image = len(predictor.dataset_json["channel_names"]) + int(getattr(predictor, "position_channels", 0) or 0)
    mapping = {"prev_seg": n_image + MASK}
    for kind in ("points", "scribble"):
        if supported[kind]:
            mapping[kind] = [n_image + POS, n_image + NEG]
    for kind in ("bbox2d", "bbox3d", "lasso"):
        if supported[kind]:
            mapping[kind] = [n_image + BOX, n_image + BOX]
    licence = predictor.dataset_json.get("licence", predictor.dataset_json.get("license", "!!MISSING!!"))
    return {
        "supported_interactions": {k: bool(supported[k]) for k in ("points", "scribble", "bbox2d", "bbox3d", "lasso")},
        "channel_mapping": mapping,
        "num_interaction_channels": int(predictor.prompt_encoding.num_channels),
        "supports_initial_label": bool(supported["initial_seg"]),
        "supports_zero_shot_label_refinement": bool(supported["initial_seg"]),
        "preferred_scribble_thickness": [1, 1, 1],
        "interaction_decay": 1.0,  # our models keep every prompt at full strength
        "inference_session_version": f"nnunet-prompt {getattr(nnunet_prompt, '__version__', '0')}",
        "license": str(licence),
        "supports_undo": bool(undo),
        "do_autozoom": bool(autozoom),
        "nnunet_prompt_extensions": ({"set_text": TEXT_PATH} if predictor.clinical_context is not None else {}),
        "model": {"trainer": predictor.trainer_name, "patch_size": [int(v) for v in predictor.configuration_manager.patch_size],
                  "prompt_channels": list(predictor.prompt_encoding.channels)},
    }


def require(supported: Dict[str, bool], kind: str, trainer: str, override: bool = False) -> None:
    if not supported.get(kind, False) and not override:
        raise InteractionRefused(f"This model ({trainer}) does not take '{kind}' interactions; it takes "
                                 f"{sorted(k for k, v in supported.items() if v)}.")


def _ints(values, what: str, n: int) -> List[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InteractionRefused(f"{what} must be {n} numbers, got {values!r}")
    if len(out) != n or not all(np.isfinite(out)):
        raise InteractionRefused(f"{what} must be {n} finite numbers, got {values!r}")
    return out


def point_to_xyz(coordinates, image_shape: Sequence[int]) -> tuple:
    a = _ints(coordinates, "coordinates", 3)
    if any(v < -0.5 or v > s - 0.5 for v, s in zip(a, image_shape)):
        raise InteractionRefused(f"point {list(coordinates)} lies outside the image of shape {list(image_shape)}")
    return tuple(a[::-1])


def bbox_to_xyz(bbox_coords, image_shape: Sequence[int]) -> tuple:
    """Protocol box [[start, stop) per array axis] -> our inclusive (x, y, z) corners."""
    if not isinstance(bbox_coords, (list, tuple)) or len(bbox_coords) != 3:
        raise InteractionRefused(f"bbox_coords must be 3 [start, stop] pairs, got {bbox_coords!r}")
    lo, hi = [], []
    for axis, (pair, size) in enumerate(zip(bbox_coords, image_shape)):
        start, stop = _ints(pair, f"bbox_coords[{axis}]", 2)
        start, stop = int(round(start)), int(round(stop))
        if stop - start < 1:
            raise InteractionRefused(f"bbox_coords {bbox_coords!r} has no extent along axis {axis}")
        start, stop = max(start, 0), min(stop, int(size))
        if stop <= start:
            raise InteractionRefused(f"bbox_coords {bbox_coords!r} lies outside the image of shape {list(image_shape)}")
        lo.append(start)
        hi.append(stop - 1)
    return tuple(lo[::-1]), tuple(hi[::-1])


def stroke_offset(mask: np.ndarray, interaction_bbox: Optional[list], image_shape: Sequence[int], what: str):
    """The crop's offset (z, y, x) of a scribble/lasso; checks its shape against the bbox or the image."""
    if mask.ndim != 3:
        raise InteractionRefused(f"the {what} must be a 3D array, got shape {list(mask.shape)}")
    if interaction_bbox is None:
        if tuple(mask.shape) != tuple(image_shape):
            raise InteractionRefused(f"the {what} of shape {list(mask.shape)} differs from the image's "
                                     f"{list(image_shape)}; send the whole image's shape or give interaction_bbox")
        return (0, 0, 0)
    if not isinstance(interaction_bbox, (list, tuple)) or len(interaction_bbox) != 3:
        raise InteractionRefused(f"interaction_bbox must be 3 [start, stop] pairs, got {interaction_bbox!r}")
    starts = []
    for axis, (pair, size, n) in enumerate(zip(interaction_bbox, image_shape, mask.shape)):
        start, stop = (int(v) for v in _ints(pair, f"interaction_bbox[{axis}]", 2))
        if start < 0 or stop > size or stop - start != n:
            raise InteractionRefused(f"interaction_bbox {interaction_bbox!r} does not fit the image of shape "
                                     f"{list(image_shape)} or the {what}'s shape {list(mask.shape)}")
        starts.append(start)
    return tuple(starts)

"""The one prompt model of nnunet-prompt: what a user tells the model about one target in one case.

Coordinates
-----------
A prompt's points and boxes are given either in

* ``"voxel"`` coordinates (the default): 0-based indices into the *raw* image as SimpleITK/ITK
  orders them, **(x, y, z) = (i, j, k)**: x runs fastest in the file. This is the order of
  ``sitk.Image.TransformPhysicalPointToIndex`` and of ITK-SNAP's voxel coordinates (which are 1-based:
  subtract 1). It is the *reverse* of the numpy array that ``sitk.GetArrayFromImage`` returns
  (``array[z, y, x]``). Non-integer values are allowed for points.
* ``"mm"``: world (physical) coordinates in millimetres in ITK's LPS convention, exactly what
  ``sitk.Image.TransformIndexToPhysicalPoint`` returns. They take origin, spacing and direction into
  account; RAS viewers (3D Slicer's default) show x and y with the opposite sign.

Boxes are inclusive on both corners: ``{"min": [x0, y0, z0], "max": [x1, y1, z1]}`` covers the voxels
``x0..x1`` etc. A box whose extent is zero along exactly one axis is a 2D box on that slice (a box
drawn on one axial slice has ``z0 == z1``). A box flat along two or more axes, or with ``min > max``,
is refused.

A prompt addresses one target *label* of the dataset (its integer value or its name in
``dataset.json``). It may be omitted when the dataset has a single foreground label. In a region
dataset (``"labels"`` given as lists, e.g. from ``nnunet-prompt convert --overlap regions``) a prompt
addresses one region, by its name (see ``nnunet_prompt.prompts.regions_or_labels``).

The JSON file format (one file mapping case identifiers to prompts) is in ``prompts.schema.json``
beside this module and in docs/reference/prompts.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from nnunet_prompt.prompts.geometry import ImageGeometry

COORDINATE_SYSTEMS = ("voxel", "mm")
PROMPT_KEYS = {"label", "coordinates", "positive_points", "negative_points", "boxes", "mask", "text"}
BOX_KEYS = {"min", "max"}


class PromptError(ValueError):
    """Invalid prompt input. The message names the case, the file and what to change."""


def _where(case: Optional[str], source: Optional[str]) -> str:
    parts = []
    if case is not None:
        parts.append(f"case '{case}'")
    if source is not None:
        parts.append(f"file '{source}'")
    return (" (" + ", ".join(parts) + ")") if parts else ""


def _as_triplet(value: Any, what: str, where: str) -> Tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise PromptError(f"{what} must be a list of 3 numbers [x, y, z], got {value!r}{where}.")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise PromptError(f"{what} must contain numbers, got {value!r}{where}.")
        if not np.isfinite(v):
            raise PromptError(f"{what} contains a non-finite value: {value!r}{where}.")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class Box:
    """Inclusive box corners in the prompt's coordinate system, order (x, y, z)."""
    min: Tuple[float, float, float]
    max: Tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"min": list(self.min), "max": list(self.max)}


@dataclass(frozen=True)
class VoxelBox:
    """A validated box in raw voxel indices (x, y, z), inclusive, integer corners."""
    min: Tuple[int, int, int]
    max: Tuple[int, int, int]

    @property
    def flat_axes(self) -> Tuple[int, ...]:
        return tuple(a for a in range(3) if self.min[a] == self.max[a])


@dataclass
class Prompt:
    """Prompts for one target of one case. See the module docstring for coordinates."""
    label: Union[int, str, None] = None
    coordinates: str = "voxel"
    positive_points: List[Tuple[float, float, float]] = field(default_factory=list)
    negative_points: List[Tuple[float, float, float]] = field(default_factory=list)
    boxes: List[Box] = field(default_factory=list)
    mask: Optional[str] = None  # path to a mask image on the same grid as the case's image
    text: Optional[str] = None

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, d: Any, case: Optional[str] = None, source: Optional[str] = None,
                  base_dir: Optional[str] = None) -> "Prompt":
        where = _where(case, source)
        if not isinstance(d, dict):
            raise PromptError(f"A prompt must be a JSON object, got {type(d).__name__}{where}.")
        unknown = set(d) - PROMPT_KEYS
        if unknown:
            raise PromptError(f"Unknown prompt key(s) {sorted(unknown)}{where}. "
                              f"Allowed keys: {sorted(PROMPT_KEYS)}.")
        coordinates = d.get("coordinates", "voxel")
        if coordinates not in COORDINATE_SYSTEMS:
            raise PromptError(f"'coordinates' must be one of {COORDINATE_SYSTEMS}, got {coordinates!r}{where}.")
        label = d.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, (int, str))):
            raise PromptError(f"'label' must be a label value (int) or a label name (str), got {label!r}{where}.")

        def points(key):
            value = d.get(key, [])
            if not isinstance(value, list):
                raise PromptError(f"'{key}' must be a list of [x, y, z] points, got {value!r}{where}.")
            return [_as_triplet(p, f"'{key}' entry", where) for p in value]

        boxes_raw = d.get("boxes", [])
        if not isinstance(boxes_raw, list):
            raise PromptError(f"'boxes' must be a list of {{'min': [x,y,z], 'max': [x,y,z]}} objects{where}.")
        boxes = []
        for b in boxes_raw:
            if not isinstance(b, dict) or set(b) != BOX_KEYS:
                raise PromptError(f"Each box must be an object with exactly the keys 'min' and 'max', got {b!r}{where}.")
            boxes.append(Box(_as_triplet(b["min"], "box 'min'", where), _as_triplet(b["max"], "box 'max'", where)))

        mask = d.get("mask")
        if mask is not None:
            if not isinstance(mask, str):
                raise PromptError(f"'mask' must be a path to an image file, got {mask!r}{where}.")
            if base_dir is not None and not os.path.isabs(mask):
                mask = os.path.join(base_dir, mask)
        text = d.get("text")
        if text is not None and not isinstance(text, str):
            raise PromptError(f"'text' must be a string, got {text!r}{where}.")

        p = cls(label=label, coordinates=coordinates, positive_points=points("positive_points"),
                negative_points=points("negative_points"), boxes=boxes, mask=mask, text=text)
        if not (p.positive_points or p.negative_points or p.boxes or p.mask or p.text):
            raise PromptError(f"The prompt is empty: give at least one of positive_points, negative_points, "
                              f"boxes, mask or text{where}.")
        return p

    @property
    def has_location(self) -> bool:
        """Whether the prompt says where the object is (a spatial model needs this; text alone does not)."""
        return bool(self.positive_points or self.negative_points or self.boxes or self.mask)

    def require_location(self, case: Optional[str] = None, source: Optional[str] = None) -> None:
        if not self.has_location:
            raise PromptError(f"The prompt has no location{_where(case, source)}: this model takes spatial prompts "
                              f"only (positive_points, negative_points, boxes or mask); its 'text' would be ignored. "
                              f"Add a click or a box, or use a text-conditioned model.")

    def to_dict(self) -> dict:
        d: Dict[str, Any] = {"coordinates": self.coordinates}
        if self.label is not None:
            d["label"] = self.label
        if self.positive_points:
            d["positive_points"] = [list(p) for p in self.positive_points]
        if self.negative_points:
            d["negative_points"] = [list(p) for p in self.negative_points]
        if self.boxes:
            d["boxes"] = [b.to_dict() for b in self.boxes]
        if self.mask is not None:
            d["mask"] = self.mask
        if self.text is not None:
            d["text"] = self.text
        return d

    # ------------------------------------------------------------- resolution
    def resolve_label(self, labels: Dict[str, Union[int, Tuple[int, ...]]], case: Optional[str] = None,
                      source: Optional[str] = None) -> Union[int, Tuple[int, ...]]:
        """Return the target this prompt addresses. ``labels`` is dataset.json's 'labels' restricted to foreground
        targets (name -> int label value, or for region datasets name -> region as a tuple of label values, see
        ``nnunet_prompt.prompts.regions_or_labels.prompt_targets``); regions are addressed by name."""
        where = _where(case, source)
        if self.label is None:
            if len(labels) == 1:
                return next(iter(labels.values()))
            raise PromptError(f"The dataset has several foreground labels {labels}; the prompt must say which one it "
                              f"addresses with \"label\": <name or value>{where}.")
        if isinstance(self.label, str):
            if self.label in labels:
                return labels[self.label]
            raise PromptError(f"Unknown label name '{self.label}'{where}. The dataset's foreground labels are {labels}.")
        if any(isinstance(v, tuple) for v in labels.values()):
            raise PromptError(f"Label value {self.label}{where}: this dataset is region-based (its labels are nnU-Net "
                              f"regions {labels}); a prompt names the region it addresses, e.g. \"label\": "
                              f"\"{next(iter(labels))}\".")
        if self.label in labels.values():
            return int(self.label)
        raise PromptError(f"Unknown label value {self.label}{where}. The dataset's foreground labels are {labels}.")

    def to_voxel(self, geometry: ImageGeometry, case: Optional[str] = None,
                 source: Optional[str] = None) -> "VoxelPrompt":
        """Validate against the image and convert points and boxes to raw voxel indices (x, y, z)."""
        where = _where(case, source)
        to_index = (lambda p: np.asarray(p, dtype=float)) if self.coordinates == "voxel" else geometry.world_to_index

        def check_point(p, what):
            idx = to_index(p)
            if np.any(idx < -0.5) or np.any(idx > np.asarray(geometry.size) - 0.5):
                unit = "voxel index" if self.coordinates == "voxel" else "mm (world LPS)"
                raise PromptError(f"{what} {list(p)} ({unit}) lies outside the image of size {list(geometry.size)} "
                                  f"(x, y, z){where}. Voxel coordinates are 0-based in (x, y, z) order; "
                                  f"check the axis order and the coordinate system.")
            return tuple(float(v) for v in idx)

        pos = [check_point(p, "Positive point") for p in self.positive_points]
        neg = [check_point(p, "Negative point") for p in self.negative_points]
        boxes = []
        for b in self.boxes:
            lo, hi = to_index(b.min), to_index(b.max)
            if self.coordinates == "mm":
                # a direction matrix may flip axes: order the corners after mapping
                lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
            elif np.any(lo > hi):
                raise PromptError(f"Inverted box {b.to_dict()}{where}: every 'min' coordinate must be <= 'max'.")
            lo_i, hi_i = np.round(lo).astype(int), np.round(hi).astype(int)
            if np.any(lo_i < 0) or np.any(hi_i > np.asarray(geometry.size) - 1):
                raise PromptError(f"Box {b.to_dict()} reaches outside the image of size {list(geometry.size)} "
                                  f"(x, y, z){where}.")
            vb = VoxelBox(tuple(int(v) for v in lo_i), tuple(int(v) for v in hi_i))
            if len(vb.flat_axes) > 1:
                raise PromptError(f"Empty box {b.to_dict()}{where}: it has zero extent along {len(vb.flat_axes)} axes. "
                                  f"A 3D box needs extent along all axes, a 2D box along exactly two.")
            boxes.append(vb)
        mask = None
        if self.mask is not None:
            mask = load_mask_on_geometry(self.mask, geometry, case, source)
        return VoxelPrompt(pos, neg, boxes, mask, self.text)


@dataclass
class VoxelPrompt:
    """A prompt validated against its image: points and boxes in raw voxel indices (x, y, z); the mask
    as a numpy array in SimpleITK's array order (z, y, x)."""
    positive_points: List[Tuple[float, float, float]]
    negative_points: List[Tuple[float, float, float]]
    boxes: List[VoxelBox]
    mask: Optional[np.ndarray] = None
    text: Optional[str] = None


def load_mask_on_geometry(path: str, geometry: ImageGeometry, case: Optional[str] = None,
                          source: Optional[str] = None) -> np.ndarray:
    import SimpleITK as sitk
    where = _where(case, source)
    if not os.path.isfile(path):
        raise PromptError(f"Mask file '{path}' does not exist{where}.")
    from nnunet_prompt.image_files import ImageFileError, check_image_file
    try:
        check_image_file(path)
        img = sitk.ReadImage(path)
    except (ImageFileError, RuntimeError) as e:
        raise PromptError(f"Mask '{path}' cannot be read{where}: {e}") from None
    other = ImageGeometry.from_sitk(img)
    problem = geometry.mismatch(other)
    if problem:
        raise PromptError(f"Mask '{path}' is not on the image's grid: {problem}{where}. Resample the mask onto the "
                          f"image (nearest neighbour), e.g. with SimpleITK's Resample.")
    mask = sitk.GetArrayFromImage(img) > 0
    if not mask.any():
        raise PromptError(f"Mask '{path}' has no foreground voxel{where}: an empty mask tells the model nothing. Draw "
                          f"the object, or leave 'mask' out.")
    return mask


PromptsByCase = Dict[str, List[Prompt]]


def parse_prompts(data: Any, source: Optional[str] = None, base_dir: Optional[str] = None) -> PromptsByCase:
    """Parse the JSON structure {case_id: prompt or [prompt, ...]} (see prompts.schema.json)."""
    where = _where(None, source)
    if not isinstance(data, dict):
        raise PromptError(f"A prompts file must hold a JSON object mapping case identifiers to prompts{where}.")
    out: PromptsByCase = {}
    for case, value in data.items():
        entries = value if isinstance(value, list) else [value]
        if not entries:
            raise PromptError(f"Case '{case}' has an empty list of prompts{where}.")
        out[case] = [Prompt.from_dict(e, case, source, base_dir) for e in entries]
    return out


def load_prompts_file(path: str) -> PromptsByCase:
    from nnunet_prompt.io_utils import InputFileError, read_json
    try:
        data = read_json(path, "Prompts file")
    except InputFileError as e:
        raise PromptError(f"{e} See docs/reference/prompts.md for the format.") from None
    return parse_prompts(data, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def save_prompts_file(prompts: PromptsByCase, path: str) -> None:
    from nnunet_prompt.io_utils import atomic_write_json
    atomic_write_json({k: [p.to_dict() for p in v] for k, v in prompts.items()}, path)


def foreground_labels(dataset_json: dict) -> Dict[str, int]:
    """Foreground labels (name -> value) of a label-based dataset.json. Region-based datasets are refused."""
    labels = {}
    for name, value in dataset_json["labels"].items():
        if isinstance(value, (list, tuple)):
            raise PromptError("Region-based datasets (labels given as lists) are not supported by prompt trainers yet; "
                              "prompt one label at a time with a label-based dataset.json.")
        if name == "ignore" or int(value) == 0:
            continue
        labels[name] = int(value)
    return labels

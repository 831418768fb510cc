"""An interactive segmentation session around a trained prompt model (in the spirit of nnInteractive's).

    session = InteractiveSession(model_folder, fold=0, device="cuda")
    session.set_image("case_0000.nii.gz")            # or an array (z, y, x) with spacing
    session.add_point((x, y, z), positive=True)       # voxel (x, y, z) or coordinates="mm"
    session.add_box((x0, y0, z0), (x1, y1, z1))
    session.undo(); session.reset()
    mask = session.mask                               # numpy (z, y, x) on the input image's grid

* The image is preprocessed once per ``set_image`` (nnU-Net's own preprocessor of the model's plans).
* Each interaction runs the network only on a patch-sized region centred on it (nnU-Net's sliding window
  on that region). While the predicted object touches a side of the region that is not the image
  border, the region grows by half a patch on that side and is predicted again (``max_growth`` times at
  most). The region's result replaces the previous result there; the rest of the volume is kept.
* One session segments one object; the previous result is fed back as the mask prompt.
* ``cross_patch=True`` (models trained with PSAPTrainer_CPP, CT-SAM3D's cross-patch prompt): a positive click
  segments the patch around it (no growth), then the model's CPP head proposes clicks for the neighbouring
  patches and those are segmented and merged, until no new patch is proposed or ``max_patches`` are done
  (``nnunet_prompt.inference.cross_patch``). ``proposed_points`` lists the clicks it made; undo removes them.
* 2d models (e.g. SAMLoRATrainer_box on a SAM2DPlanner plan) are prompted slice by slice, as they were
  trained: an interaction predicts the slices its prompt lies on (a click its slice, a box its z range), all
  of each slice, and never grows into other slices (a 2d model cannot see an object beyond its prompt's slices).
* Text-conditioned models (TextPromptTrainer) take ``set_text("Left-sided tumour, cT2N1M0.")`` instead of
  points and boxes: the whole image is predicted with that text and ``mask`` is the dataset's label map.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from nnunet_prompt.inference.cross_patch import CrossPatchPropagator, Propagation, require_cross_patch_head
from nnunet_prompt.inference.predictor import PromptPredictor
from nnunet_prompt.networks.contract import object_label_manager, unwrap
from nnunet_prompt.prompts.encoding import encode_preprocessed
from nnunet_prompt.prompts.geometry import ImageGeometry, PreprocessedGrid, case_volume_spacing
from nnunet_prompt.prompts.model import Prompt
from nnunet_prompt.prompts.regions import Region, bounding_region, grown_region, region_around

BACKGROUND_LOGIT = -10.0


@dataclass
class _Prompts:
    positive: List[np.ndarray] = field(default_factory=list)   # preprocessed coordinates
    negative: List[np.ndarray] = field(default_factory=list)
    boxes: List[Tuple[Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    proposed: List[np.ndarray] = field(default_factory=list)   # positive clicks proposed by cross-patch propagation

    def copy(self) -> "_Prompts":
        return _Prompts(list(self.positive), list(self.negative), list(self.boxes), list(self.proposed))


class InteractiveSession:
    def __init__(self, model_folder: str, fold: Union[int, str] = 0, device: Union[str, torch.device] = "cpu",
                 checkpoint_name: str = "checkpoint_final.pth", use_mirroring: bool = False, max_growth: int = 3,
                 cross_patch: bool = False, cross_patch_threshold: float = 0.5, max_patches: int = 27,
                 cross_patch_require_contact: bool = True):
        self.predictor = PromptPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                         perform_everything_on_device=True, device=torch.device(device),
                                         verbose=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(model_folder, (fold,), checkpoint_name)
        self.predictor.network.load_state_dict(self.predictor.list_of_parameters[0])
        self.predictor.network.eval()
        self.patch = [int(p) for p in self.predictor.configuration_manager.patch_size]
        self.slice_wise = len(self.patch) == 2  # a 2d configuration: see the module doc
        self.max_growth = max_growth
        self.cross_patch: Optional[CrossPatchPropagator] = None
        if cross_patch:
            head = require_cross_patch_head(unwrap(self.predictor.network), model_folder)
            self.cross_patch = CrossPatchPropagator(head, cross_patch_threshold, max_patches,
                                                    cross_patch_require_contact, self.predictor.device)
        self.last_propagation: Optional[Propagation] = None
        self.num_preprocessing_runs = 0
        self.last_latency_ms: Optional[float] = None
        self.last_region: Optional[Region] = None
        self._data = None

    # ------------------------------------------------------------------ image
    def set_image(self, image: Union[str, Sequence[str], np.ndarray], spacing: Optional[Sequence[float]] = None,
                  origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Sequence[float] = tuple(np.eye(3).ravel())):
        """A file path or a list of channel files (read with the model's nnU-Net reader), or an array in SimpleITK order (z, y, x) or
        (channels, z, y, x) with ``spacing`` (x, y, z) in mm and optional origin and direction."""
        pm, cm = self.predictor.plans_manager, self.predictor.configuration_manager
        if isinstance(image, str) or (isinstance(image, (list, tuple)) and image and isinstance(image[0], str)):
            data, props = pm.image_reader_writer_class().read_images([image] if isinstance(image, str) else list(image))
        else:
            if spacing is None:
                raise ValueError("set_image with an array needs spacing=(x, y, z) in mm.")
            data = np.asarray(image, dtype=np.float32)
            data = data[None] if data.ndim == 3 else data
            props = {"spacing": [float(s) for s in spacing[::-1]],
                     "sitk_stuff": {"spacing": tuple(float(s) for s in spacing), "origin": tuple(map(float, origin)),
                                    "direction": tuple(map(float, direction))}}
        n_channels = len(self.predictor.dataset_json["channel_names"])
        if data.shape[0] != n_channels:
            raise ValueError(f"The model expects {n_channels} image channel(s), the image has {data.shape[0]}.")
        pre, _, props = cm.preprocessor_class(verbose=False).run_case_npy(
            data.astype(np.float32), None, props, pm, cm, self.predictor.dataset_json)
        self.num_preprocessing_runs += 1
        self._props = props
        self._data = torch.from_numpy(np.ascontiguousarray(pre)).float()
        self._grid = PreprocessedGrid(props, pm.transpose_forward, pre.shape[1:])
        self._geometry = ImageGeometry.from_nnunet_properties(props, self._grid.raw_shape_zyx)
        self._spacing = case_volume_spacing(cm.spacing, props, pm.transpose_forward)  # 3D even for 2d configurations
        self.reset()

    def _require_image(self):
        if self._data is None:
            raise RuntimeError("Call set_image() first.")

    # ---------------------------------------------------------- interactions
    def reset(self):
        self._require_image()
        self._prompts = _Prompts()
        self._logits = torch.full(self._grid.shape, BACKGROUND_LOGIT)
        self._history: List[tuple] = []
        self._text_logits: Optional[torch.Tensor] = None

    @property
    def takes_text(self) -> bool:
        return self.predictor.clinical_context is not None

    def set_text(self, text: str) -> np.ndarray:
        """Text-conditioned models: segment the whole image as the clinical text says; returns the label map."""
        self._require_image()
        if not self.takes_text:
            raise ValueError("This model takes points, boxes and masks, not text.")
        if self.predictor.clinical_context.entry_key != "text":
            raise ValueError("This model was trained on structured clinical fields (numeric-category ablation), "
                             "not on text; predict it with `nnunet-prompt predict --clinical-text`.")
        t0 = time.perf_counter()
        with torch.no_grad(), unwrap(self.predictor.network).conditioned_on([{"text": str(text)}]):
            logits = self.predictor.predict_sliding_window_return_logits(self._data).float().cpu()
        self._history.append(("text", self._text_logits))
        self._text_logits = logits
        self.last_region = ((0, 0, 0), tuple(self._grid.shape))
        self.last_latency_ms = 1000 * (time.perf_counter() - t0)
        return self.mask

    def _require_spatial(self):
        if self.takes_text:
            raise ValueError("This model is conditioned on clinical text only: use set_text().")

    def add_point(self, point: Sequence[float], positive: bool = True, coordinates: str = "voxel") -> np.ndarray:
        self._require_spatial()
        key = "positive_points" if positive else "negative_points"
        vp = self._to_voxel({key: [list(point)], "coordinates": coordinates})
        p = self._grid.raw_to_preprocessed(vp.positive_points[0] if positive else vp.negative_points[0])
        prompts = self._prompts.copy()
        (prompts.positive if positive else prompts.negative).append(p)
        if positive and self.cross_patch is not None:
            return self._interact_cross_patch(prompts, center=p)
        return self._interact(prompts, center=p, z_range=(int(round(p[0])), int(round(p[0])) + 1))

    def add_box(self, lo: Sequence[float], hi: Sequence[float], coordinates: str = "voxel") -> np.ndarray:
        self._require_spatial()
        vp = self._to_voxel({"boxes": [{"min": list(lo), "max": list(hi)}], "coordinates": coordinates})
        b = self._grid.box_to_preprocessed(vp.boxes[0].min, vp.boxes[0].max)
        prompts = self._prompts.copy()
        prompts.boxes.append(b)
        return self._interact(prompts, center=(np.asarray(b[0]) + np.asarray(b[1])) / 2,
                              z_range=(int(b[0][0]), int(b[1][0]) + 1))

    def add_mask(self, mask: np.ndarray) -> np.ndarray:
        """A mask prompt (z, y, x) on the image grid: it becomes the previous result, then the region around
        its centre is predicted with it."""
        self._require_image()
        self._require_spatial()
        mask = np.asarray(mask, bool)
        if mask.shape != tuple(self._grid.raw_shape_zyx):
            raise ValueError(f"Mask shape {mask.shape} differs from the image's {tuple(self._grid.raw_shape_zyx)} (z, y, x).")
        if not mask.any():
            raise ValueError("The mask prompt is empty.")
        pre = self._grid.mask_to_preprocessed(mask, self.predictor.configuration_manager, self._props["spacing"])
        if not pre.any():
            raise ValueError("The mask prompt vanishes on the model's grid (smaller than one preprocessed voxel).")
        before = (self._prompts, ((0, 0, 0), self._grid.shape), self._logits.clone())
        self._logits = torch.where(torch.from_numpy(pre), -BACKGROUND_LOGIT, BACKGROUND_LOGIT).float()
        z = np.flatnonzero(pre.any(axis=(1, 2)))
        out = self._interact(self._prompts.copy(), center=np.argwhere(pre).mean(0), z_range=(int(z[0]), int(z[-1]) + 1))
        self._history[-1] = before  # undo restores the whole volume as it was before the mask
        return out

    def undo(self) -> np.ndarray:
        if not self._history:
            raise IndexError("Nothing to undo.")
        if self._history[-1][0] == "text":
            self._text_logits = self._history.pop()[1]
            return self.mask
        prompts, (lo, hi), old = self._history.pop()
        self._prompts = prompts
        self._logits[tuple(slice(a, b) for a, b in zip(lo, hi))] = old
        return self.mask

    @property
    def proposed_points(self) -> List[Tuple[float, ...]]:
        """Clicks proposed by cross-patch propagation, as raw-image voxel (x, y, z)."""
        return [tuple(float(v) for v in self._grid.preprocessed_to_raw(p)) for p in self._prompts.proposed]

    @property
    def mask(self) -> np.ndarray:
        """The current object mask on the input image's grid, numpy (z, y, x) uint8 (a label map for text models)."""
        self._require_image()
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        if self.takes_text:  # the dataset's label map
            if self._text_logits is None:
                return np.zeros(self._grid.raw_shape_zyx, dtype=np.uint8)
            seg = convert_predicted_logits_to_segmentation_with_correct_shape(
                self._text_logits.numpy(), self.predictor.plans_manager, self.predictor.configuration_manager,
                self.predictor.label_manager, self._props, return_probabilities=False)
            return np.asarray(seg, dtype=np.uint8)
        logits = torch.stack([torch.zeros_like(self._logits), self._logits]).numpy()
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.predictor.plans_manager, self.predictor.configuration_manager,
            object_label_manager(), self._props, return_probabilities=False)
        return np.asarray(seg, dtype=np.uint8)

    # -------------------------------------------------------------- internals
    def _to_voxel(self, d: dict):
        self._require_image()
        return Prompt.from_dict(d).to_voxel(self._geometry)

    def _region_channels(self, prompts: _Prompts, region: Region) -> torch.Tensor:
        lo, hi = np.asarray(region[0]), np.asarray(region[1])
        shape = tuple(int(v) for v in hi - lo)
        boxes = []
        for blo, bhi in prompts.boxes:
            a, b = np.maximum(np.asarray(blo) - lo, 0), np.minimum(np.asarray(bhi) - lo, np.asarray(shape) - 1)
            if np.all(a <= b):
                boxes.append((tuple(a), tuple(b)))
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        return encode_preprocessed(shape, self._spacing, self.predictor.prompt_encoding,
                                   positive=[p - lo for p in prompts.positive + prompts.proposed],
                                   negative=[p - lo for p in prompts.negative],
                                   boxes=boxes, mask=(self._logits[sl] > 0).numpy())

    def _predict_region(self, prompts: _Prompts, region: Region) -> torch.Tensor:
        sl = tuple(slice(a, b) for a, b in zip(*region))
        x = torch.cat([self._data[(slice(None), *sl)], self._region_channels(prompts, region)], 0)
        with torch.no_grad(), self.predictor._object_output():
            logits = self.predictor.predict_sliding_window_return_logits(x).float().cpu()
        return logits[1] - logits[0]

    def _interact(self, prompts: _Prompts, center, z_range: Tuple[int, int]) -> np.ndarray:
        t0 = time.perf_counter()
        shape = self._grid.shape
        if self.slice_wise:  # the prompt's slices, whole; growth only in-plane (there is nothing to grow)
            z0, z1 = max(0, z_range[0]), min(int(shape[0]), z_range[1])
            region = ((z0, 0, 0), (z1, int(shape[1]), int(shape[2])))
            growth = [0, 0, 0]
        else:
            region = region_around(center, self.patch, shape)
            growth = self.patch
        for attempt in range(self.max_growth + 1):
            diff = self._predict_region(prompts, region)
            bigger = grown_region(region, (diff > 0).numpy(), growth, shape) if attempt < self.max_growth else None
            if bigger is None:
                break
            region = bigger
        sl = tuple(slice(a, b) for a, b in zip(*region))
        self._history.append((self._prompts, region, self._logits[sl].clone()))
        self._prompts = prompts
        self._logits[sl] = diff
        self.last_region = region
        self.last_latency_ms = 1000 * (time.perf_counter() - t0)
        return self.mask

    def _interact_cross_patch(self, prompts: _Prompts, center) -> np.ndarray:
        """A positive click with cross-patch propagation: the patch around it, then the proposed neighbours."""
        t0 = time.perf_counter()
        shape = self._grid.shape
        before_prompts, before_logits = self._prompts, self._logits.clone()
        region = region_around(center, self.patch, shape)
        self._logits[tuple(slice(a, b) for a, b in zip(*region))] = self._predict_region(prompts, region)

        def segment(r, click):
            prompts.proposed.append(np.asarray(click, dtype=float))
            return self._predict_region(prompts, r)

        self.last_propagation = self.cross_patch.run(self._data, self._logits, region, segment)
        touched = bounding_region(self.last_propagation.regions)
        self._history.append((before_prompts, touched, before_logits[tuple(slice(a, b) for a, b in zip(*touched))]))
        self._prompts = prompts
        self.last_region = touched
        self.last_latency_ms = 1000 * (time.perf_counter() - t0)
        return self.mask

"""An interactive segmentation session around a trained prompt model (in the spirit of nnInteractive's).

    session = InteractiveSession(model_folder, fold=0, device="cuda")
    session.set_image("case_0000.nii.gz")            # or an array (z, y, x) with spacing
    session.add_point((x, y, z), positive=True)       # voxel (x, y, z) or coordinates="mm"
    session.add_box((x0, y0, z0), (x1, y1, z1))
    session.undo(); session.reset()
    mask = session.mask                               # numpy (z, y, x) on the input image's grid
    session.add_scribble(stroke_zyx, positive=True)   # also add_lasso(filled_zyx), add_mask(contour_zyx)

* The image is preprocessed once per ``set_image`` (nnU-Net's own preprocessor of the model's plans).
* Each interaction runs the network only on a patch-sized region centred on it (nnU-Net's sliding window
  on that region). While the predicted object touches a side of the region that is not the image
  border, the region grows by half a patch on that side and is predicted again (``max_growth`` times at
  most). The region's result replaces the previous result there; the rest of the volume is kept.
* One session segments one object; the previous result is fed back as the mask prompt.
* Only the raw voxels the changed region reaches are resampled back to the image grid
  (``nnunet_prompt.inference.raw_window``), so a click costs the same on a 64^3 phantom and on a CT.
  ``last_changed_box`` is that box (z, y, x, half-open); ``add_*(..., return_mask=False)`` returns it instead of
  a copy of the whole mask (what the server sends back is ``mask_in(box)``).
* ``run_prediction=False`` queues an interaction; ``predict()`` runs the queued ones at once.
* A scribble is a trail of clicks on the click channels (one per click radius along it); a lasso is the filled
  outline on its slice in the box channel (a box is the rectangle case of that channel). See
  docs/reference/interactions.md.
* ``cross_patch=True`` (models trained with PSAPTrainer_CPP, CT-SAM3D's cross-patch prompt): a positive click
  segments the patch around it (no growth), then the model's CPP head proposes clicks for the neighbouring
  patches and those are segmented and merged, until no new patch is proposed or ``max_patches`` are done
  (``nnunet_prompt.inference.cross_patch``). ``proposed_points`` lists the clicks it made; undo removes them.
* 2d models (e.g. SAMLoRATrainer_box on a SAM2DPlanner plan) are prompted slice by slice, as they were
  trained: an interaction predicts the slices its prompt lies on (a click its slice, a box its z range), all
  of each slice, and never grows into other slices (a 2d model cannot see an object beyond its prompt's slices).
* Text-conditioned models (TextPromptTrainer) take ``set_text("Left-sided tumour, cT2N1M0.")`` instead of
  points and boxes: the whole image is predicted with that text and ``mask`` is the dataset's label map.
* Models of text and prompts (TextAndPromptTrainer) segment one object (``set_target_label``; the only label by
  default) from both: ``set_text`` predicts the whole image with the text (and any prompts so far) and every later
  interaction is predicted with that text still conditioning it (``nnunet_prompt.inference.text_and_prompts``).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from nnunet_prompt.inference.cross_patch import CrossPatchPropagator, Propagation, require_cross_patch_head
from nnunet_prompt.inference.predictor import PromptPredictor
from nnunet_prompt.inference.prompt_kinds import kinds_read, refuse_unread
from nnunet_prompt.inference.raw_window import RawBox, RawWindowExport, box_slices
from nnunet_prompt.networks.contract import object_label_manager, unwrap
from nnunet_prompt.prompts.encoding import BOX, ball_radius_voxels, encode_preprocessed
from nnunet_prompt.prompts.geometry import ImageGeometry, PreprocessedGrid, case_volume_spacing
from nnunet_prompt.prompts.model import Prompt
from nnunet_prompt.prompts.regions import Region, bounding_region, grown_region, region_around, region_slices

BACKGROUND_LOGIT = -10.0


@dataclass
class _Prompts:
    positive: List[np.ndarray] = field(default_factory=list)   # preprocessed coordinates
    negative: List[np.ndarray] = field(default_factory=list)
    boxes: List[Tuple[Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    proposed: List[np.ndarray] = field(default_factory=list)   # positive clicks proposed by cross-patch propagation
    outlines: List[Tuple[Tuple[int, ...], np.ndarray]] = field(default_factory=list)  # filled lassos: (lo, mask)
    text: Optional[str] = None  # models of text and prompts: the text that conditions every prediction

    def copy(self) -> "_Prompts":
        return _Prompts(list(self.positive), list(self.negative), list(self.boxes), list(self.proposed),
                        list(self.outlines), self.text)


@dataclass
class _Change:
    """What one interaction changed, to undo it: the prompts before, the preprocessed region and raw box it
    rewrote, and their previous values."""
    prompts: "_Prompts"
    region: Region
    logits: torch.Tensor
    raw_box: RawBox
    raw: np.ndarray


def load_session_predictor(model_folder: str, fold: Union[int, str] = 0, device: Union[str, torch.device] = "cpu",
                           checkpoint_name: str = "checkpoint_final.pth", use_mirroring: bool = False) -> PromptPredictor:
    """The trained prompt model of one fold, loaded once, in eval mode, as sessions use it."""
    predictor = PromptPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=True, device=torch.device(device), verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (fold,), checkpoint_name)
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    predictor.network.eval()
    return predictor


class InteractiveSession:
    def __init__(self, model_folder: str, fold: Union[int, str] = 0, device: Union[str, torch.device] = "cpu",
                 checkpoint_name: str = "checkpoint_final.pth", use_mirroring: bool = False, max_growth: int = 3,
                 cross_patch: bool = False, cross_patch_threshold: float = 0.5, max_patches: int = 27,
                 cross_patch_require_contact: bool = True, keep_undo: bool = True, max_scribble_clicks: int = 64,
                 predictor: Optional[PromptPredictor] = None):
        """``predictor``: one made by ``load_session_predictor`` to share a loaded model between sessions (the
        server: one network, one session per client); the caller then serialises the sessions' predictions."""
        self.predictor = predictor or load_session_predictor(model_folder, fold, device, checkpoint_name, use_mirroring)
        self.patch = [int(p) for p in self.predictor.configuration_manager.patch_size]
        self.slice_wise = len(self.patch) == 2  # a 2d configuration: see the module doc
        self.max_growth = max_growth
        self.grow = True  # region growth (the viewers' "autozoom")
        self.keep_undo = keep_undo
        self.max_scribble_clicks = max_scribble_clicks
        self.cross_patch: Optional[CrossPatchPropagator] = None
        if cross_patch:
            head = require_cross_patch_head(unwrap(self.predictor.network), model_folder)
            self.cross_patch = CrossPatchPropagator(head, cross_patch_threshold, max_patches,
                                                    cross_patch_require_contact, self.predictor.device)
        self.last_propagation: Optional[Propagation] = None
        self.target_label: Optional[int] = None  # models of text and prompts: the label segmented
        if self.takes_text and self.takes_prompts:
            from nnunet_prompt.prompts.regions_or_labels import prompt_targets
            labels = prompt_targets(self.predictor.dataset_json)
            self.target_label = next(iter(labels.values())) if len(labels) == 1 else None
        self.num_preprocessing_runs = 0
        self.last_latency_ms: Optional[float] = None
        self.last_network_ms: Optional[float] = None  # of last_latency_ms, the network's share
        self.last_region: Optional[Region] = None
        self.last_changed_box: Optional[RawBox] = None
        self.last_predicted_box: Optional[RawBox] = None  # raw box of the last region the network predicted
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
            if data.ndim != 4 or min(data.shape) < 1:
                raise ValueError(f"set_image needs a (z, y, x) or (channels, z, y, x) array, got shape {data.shape}.")
            if len(spacing) != 3 or not all(np.isfinite(float(v)) and float(v) > 0 for v in spacing):
                raise ValueError(f"spacing must be three positive numbers (x, y, z) in mm, got {list(spacing)}.")
            props = {"spacing": [float(s) for s in spacing[::-1]],
                     "sitk_stuff": {"spacing": tuple(float(s) for s in spacing), "origin": tuple(map(float, origin)),
                                    "direction": tuple(map(float, direction))}}
        n_channels = len(self.predictor.dataset_json["channel_names"])
        if data.shape[0] != n_channels:
            raise ValueError(f"The model expects {n_channels} image channel(s), the image has {data.shape[0]}.")
        if not np.all(np.isfinite(data)):
            raise ValueError("The image holds NaN or infinite values.")
        pre, _, props = cm.preprocessor_class(verbose=False).run_case_npy(
            data.astype(np.float32), None, props, pm, cm, self.predictor.dataset_json)
        self.num_preprocessing_runs += 1
        self._props = props
        self._data = torch.from_numpy(np.ascontiguousarray(pre)).float()
        self._grid = PreprocessedGrid(props, pm.transpose_forward, pre.shape[1:])
        self._geometry = ImageGeometry.from_nnunet_properties(props, self._grid.raw_shape_zyx)
        self._spacing = case_volume_spacing(cm.spacing, props, pm.transpose_forward)  # 3D even for 2d configurations
        self._export = RawWindowExport(pm, cm, props, pre.shape[1:])
        self.reset()

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """The input image's array shape (z, y, x)."""
        self._require_image()
        return tuple(self._grid.raw_shape_zyx)

    def _require_image(self):
        if self._data is None:
            raise RuntimeError("Call set_image() first.")

    # ---------------------------------------------------------- interactions
    def reset(self):
        self._require_image()
        self._prompts = _Prompts()
        self._logits = torch.full(self._grid.shape, BACKGROUND_LOGIT)
        self._mask = np.zeros(self._grid.raw_shape_zyx, dtype=np.uint8)
        self._history: List[Union[_Change, tuple]] = []
        self._pending: Optional[Tuple[_Prompts, np.ndarray, Tuple[int, int]]] = None
        self._text_logits: Optional[torch.Tensor] = None
        self.last_changed_box = self.last_predicted_box = None

    @property
    def takes_text(self) -> bool:
        return self.predictor.clinical_context is not None

    @property
    def takes_prompts(self) -> bool:
        return self.predictor.prompt_encoding is not None

    def set_target_label(self, label) -> None:
        """Models of text and prompts: the label (name or value) this session segments; starts the object anew."""
        from nnunet_prompt.prompts.regions_or_labels import prompt_targets
        self.target_label = Prompt(label=label).resolve_label(prompt_targets(self.predictor.dataset_json))
        if self._data is not None:
            self.reset()

    def set_text(self, text: str, return_mask: bool = True):
        """Text-conditioned models: segment the whole image as the clinical text says; returns the label map.
        Models of text and prompts: the text conditions this and every later prediction of the session's object;
        the whole image is predicted with it (and the prompts so far), one undo step."""
        self._require_image()
        if not self.takes_text:
            raise ValueError("This model takes points, boxes and masks, not text.")
        if self.predictor.clinical_context.entry_key != "text":
            raise ValueError("This model was trained on structured clinical fields (numeric-category ablation), "
                             "not on text; predict it with `nnunet-prompt predict --clinical-text`.")
        if self.takes_prompts:
            prompts = self._current_prompts()
            prompts.text = str(text)
            self._pending = None
            t0 = time.perf_counter()
            self.last_network_ms = 0.0
            region = ((0, 0, 0), tuple(int(v) for v in self._grid.shape))
            self._commit(prompts, region, self._predict_region(prompts, region))
            self.last_latency_ms = 1000 * (time.perf_counter() - t0)
            return self._result(return_mask)
        t0 = time.perf_counter()
        with torch.no_grad(), unwrap(self.predictor.network).conditioned_on([{"text": str(text)}]):
            logits = self.predictor.predict_sliding_window_return_logits(self._data).float().cpu()
        self._history.append(("text", self._text_logits))
        self._text_logits = logits
        self.last_region = ((0, 0, 0), tuple(self._grid.shape))
        self.last_changed_box = tuple((0, int(s)) for s in self._grid.raw_shape_zyx)
        self.last_latency_ms = 1000 * (time.perf_counter() - t0)
        return self._result(return_mask)

    def _require_spatial(self, kind: Optional[str]):
        """``kind``: the prompt key the interaction draws (``prompt_kinds``); a model that ignores it refuses it, as
        prediction does, instead of predicting as if it had not been given."""
        self._require_image()
        if self.takes_text and not self.takes_prompts:
            raise ValueError("This model is conditioned on clinical text only: use set_text().")
        read = kinds_read(self.predictor.prompt_channels_used, None)
        if kind is not None and kind not in read:
            takes = {"boxes": "add_box, add_lasso", "positive_points": "add_point, add_scribble",
                     "negative_points": "add_point(positive=False)", "mask": "add_mask"}
            refuse_unread([kind], read, None, self.predictor.trainer_name, "This interaction",
                          f"Use {'; '.join(takes[k] for k in sorted(read))} instead")

    def add_point(self, point: Sequence[float], positive: bool = True, coordinates: str = "voxel",
                  run_prediction: bool = True, return_mask: bool = True):
        key = "positive_points" if positive else "negative_points"
        self._require_spatial(key)
        vp = self._to_voxel({key: [list(point)], "coordinates": coordinates})
        p = self._grid.raw_to_preprocessed(vp.positive_points[0] if positive else vp.negative_points[0])
        prompts = self._current_prompts()
        (prompts.positive if positive else prompts.negative).append(p)
        if positive and self.cross_patch is not None and run_prediction and self._pending is None:
            self._interact_cross_patch(prompts, center=p)
            return self._result(return_mask)
        return self._interact(prompts, p, (int(round(p[0])), int(round(p[0])) + 1), run_prediction, return_mask)

    def add_box(self, lo: Sequence[float], hi: Sequence[float], coordinates: str = "voxel",
                run_prediction: bool = True, return_mask: bool = True):
        """An inclusive box (x, y, z) corners; one flat axis makes it a 2D box on that slice."""
        self._require_spatial("boxes")
        vp = self._to_voxel({"boxes": [{"min": list(lo), "max": list(hi)}], "coordinates": coordinates})
        b = self._grid.box_to_preprocessed(vp.boxes[0].min, vp.boxes[0].max)
        prompts = self._current_prompts()
        prompts.boxes.append(b)
        return self._interact(prompts, (np.asarray(b[0]) + np.asarray(b[1])) / 2, (int(b[0][0]), int(b[1][0]) + 1),
                              run_prediction, return_mask)

    def add_scribble(self, scribble: np.ndarray, positive: bool = True, offset: Sequence[int] = (0, 0, 0),
                     run_prediction: bool = True, return_mask: bool = True):
        """A scribble: a binary array (z, y, x) on the image grid, or a crop of it placed at ``offset`` (z, y, x).
        It becomes clicks along the stroke (positive or negative), at most one per click radius."""
        self._require_spatial("positive_points" if positive else "negative_points")
        zyx = self._stroke_voxels(scribble, offset, "scribble")
        pre = self._grid.raw_to_preprocessed(zyx[:, ::-1].astype(float))
        # thin the stroke: one click per cell of one click radius (the clicks' balls then cover the stroke)
        cell = np.maximum(ball_radius_voxels(self.predictor.prompt_encoding.click_radius_mm, self._spacing), 1.0)
        _, first = np.unique(np.floor(pre / cell).astype(np.int64), axis=0, return_index=True)
        clicks = pre[np.sort(first)]
        if len(clicks) > self.max_scribble_clicks:
            clicks = clicks[np.linspace(0, len(clicks) - 1, self.max_scribble_clicks).round().astype(int)]
        prompts = self._current_prompts()
        (prompts.positive if positive else prompts.negative).extend(list(clicks))
        lo, hi = pre.min(0), pre.max(0)
        return self._interact(prompts, (lo + hi) / 2, (int(np.floor(lo[0] + 0.5)), int(np.floor(hi[0] + 0.5)) + 1),
                              run_prediction, return_mask)

    def add_lasso(self, lasso: np.ndarray, offset: Sequence[int] = (0, 0, 0), run_prediction: bool = True,
                  return_mask: bool = True):
        """A lasso: the filled outline (binary (z, y, x), or a crop at ``offset``) on one slice of the image. It goes
        into the box channel (1 inside the outline): a box is the rectangular case of the same statement, "the
        object lies in here", and it is the channel the models learnt it on."""
        self._require_spatial("boxes")
        zyx = self._stroke_voxels(lasso, offset, "lasso")
        lo_r, hi_r = zyx.min(0), zyx.max(0) + 1  # raw (z, y, x), half-open
        filled = np.zeros(tuple(hi_r - lo_r), bool)
        filled[tuple((zyx - lo_r).T)] = True
        b_lo, b_hi = self._grid.box_to_preprocessed(tuple(lo_r[::-1]), tuple(hi_r[::-1] - 1))
        # sample the outline at every preprocessed voxel centre of its box (nearest raw voxel; a flat raw axis
        # stays on its one slice), so it neither leaves holes on a finer grid nor vanishes on a coarser one
        axes = [np.arange(b_lo[a], b_hi[a] + 1, dtype=float) for a in range(3)]
        centres = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        raw = np.floor(self._grid.preprocessed_to_raw(centres)[:, ::-1] + 0.5).astype(np.int64) - lo_r
        raw = np.clip(raw, 0, np.asarray(filled.shape) - 1)
        inside = filled[tuple(raw.T)].reshape(tuple(len(a) for a in axes))
        if not inside.any():
            raise ValueError("The lasso vanishes on the model's grid (smaller than one preprocessed voxel).")
        prompts = self._current_prompts()
        prompts.outlines.append((tuple(int(v) for v in b_lo), inside))
        return self._interact(prompts, (np.asarray(b_lo) + np.asarray(b_hi)) / 2, (int(b_lo[0]), int(b_hi[0]) + 1),
                              run_prediction, return_mask)

    def add_mask(self, mask: np.ndarray, run_prediction: bool = True, return_mask: bool = True):
        """A mask prompt (z, y, x) on the image grid, e.g. an automatic contour to correct: it becomes the current
        result as it is, and (``run_prediction``) the region around its centre is predicted with it (a model that does
        not read the previous mask takes it as the result only, without ``run_prediction``)."""
        self._require_spatial("mask" if run_prediction else None)
        mask = np.asarray(mask)
        if mask.shape != tuple(self._grid.raw_shape_zyx):
            raise ValueError(f"Mask shape {mask.shape} differs from the image's {tuple(self._grid.raw_shape_zyx)} (z, y, x).")
        mask = mask > 0
        if not mask.any():
            raise ValueError("The mask prompt is empty.")
        self.last_network_ms = None
        pre = self._grid.mask_to_preprocessed(mask, self.predictor.configuration_manager, self._props["spacing"])
        if not pre.any():
            raise ValueError("The mask prompt vanishes on the model's grid (smaller than one preprocessed voxel).")
        everything = ((0, 0, 0), tuple(self._grid.shape))
        whole = tuple((0, int(s)) for s in self._grid.raw_shape_zyx)
        before = _Change(self._current_prompts(), everything, self._logits.clone(), whole, self._mask.copy())
        self._pending = None
        self._logits = torch.where(torch.from_numpy(pre), -BACKGROUND_LOGIT, BACKGROUND_LOGIT).float()
        self._mask = mask.astype(np.uint8)
        if run_prediction:
            z = np.flatnonzero(pre.any(axis=(1, 2)))
            self._interact(before.prompts.copy(), np.argwhere(pre).mean(0), (int(z[0]), int(z[-1]) + 1), True, False)
            if self.keep_undo:
                self._history.pop()  # one undo step restores the state before the mask, whole
        if self.keep_undo:
            self._history.append(before)
        self.last_changed_box = whole
        return self._result(return_mask)

    def predict(self, return_mask: bool = True):
        """Run the interactions queued with ``run_prediction=False``; None (nothing queued) or as ``add_*``."""
        self._require_image()
        if self._pending is None:
            return None
        prompts, center, z_range = self._pending
        self._pending = None
        return self._interact(prompts, center, z_range, True, return_mask)

    def undo(self, return_mask: bool = True):
        """Revert the most recent interaction (queued or predicted)."""
        self._require_image()
        self.last_network_ms = None
        if self._pending is not None:
            self._pending = None
            self.last_changed_box = None
            return self._result(return_mask)
        if not self._history:
            raise IndexError("Nothing to undo." if self.keep_undo else "Undo is off for this session (keep_undo=False).")
        if isinstance(self._history[-1], tuple):  # text
            self._text_logits = self._history.pop()[1]
            self.last_changed_box = tuple((0, int(s)) for s in self._grid.raw_shape_zyx)
            return self._result(return_mask)
        change = self._history.pop()
        self._prompts = change.prompts
        self._logits[region_slices(change.region)] = change.logits
        self._mask[box_slices(change.raw_box)] = change.raw
        self.last_changed_box = change.raw_box
        return self._result(return_mask)

    @property
    def proposed_points(self) -> List[Tuple[float, ...]]:
        """Clicks proposed by cross-patch propagation, as raw-image voxel (x, y, z)."""
        return [tuple(float(v) for v in self._grid.preprocessed_to_raw(p)) for p in self._prompts.proposed]

    @property
    def mask(self) -> np.ndarray:
        """The current object mask on the input image's grid, numpy (z, y, x) uint8, a copy (a label map for text
        models)."""
        self._require_image()
        if self.takes_text and not self.takes_prompts:  # the dataset's label map
            if self._text_logits is None:
                return np.zeros(self._grid.raw_shape_zyx, dtype=np.uint8)
            from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
            seg = convert_predicted_logits_to_segmentation_with_correct_shape(
                self._text_logits.numpy(), self.predictor.plans_manager, self.predictor.configuration_manager,
                self.predictor.label_manager, self._props, return_probabilities=False)
            return np.asarray(seg, dtype=np.uint8)
        return self._mask.copy()

    def mask_in(self, box: RawBox) -> np.ndarray:
        """The current object mask inside ``box`` (z, y, x, half-open), a copy."""
        self._require_image()
        if self.takes_text and not self.takes_prompts:
            return self.mask[box_slices(box)]
        return self._mask[box_slices(box)].copy()

    # -------------------------------------------------------------- internals
    def _result(self, return_mask: bool):
        return self.mask if return_mask else self.last_changed_box

    def _current_prompts(self) -> _Prompts:
        return (self._pending[0] if self._pending is not None else self._prompts).copy()

    def _stroke_voxels(self, stroke: np.ndarray, offset: Sequence[int], what: str) -> np.ndarray:
        stroke = np.asarray(stroke)
        offset = np.asarray([int(v) for v in offset])
        shape = np.asarray(self._grid.raw_shape_zyx)
        if stroke.ndim != 3 or len(offset) != 3:
            raise ValueError(f"A {what} is a 3D array (z, y, x) with a 3D offset; got shape {stroke.shape}, "
                             f"offset {list(offset)}.")
        if np.any(offset < 0) or np.any(offset + stroke.shape > shape):
            raise ValueError(f"The {what} of shape {list(stroke.shape)} at offset {list(offset)} reaches outside the "
                             f"image of shape {list(shape)} (z, y, x).")
        zyx = np.argwhere(stroke > 0)
        if len(zyx) == 0:
            raise ValueError(f"The {what} is empty.")
        return zyx + offset

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
        out = encode_preprocessed(shape, self._spacing, self.predictor.prompt_encoding,
                                  positive=[p - lo for p in prompts.positive + prompts.proposed],
                                  negative=[p - lo for p in prompts.negative],
                                  boxes=boxes, mask=(self._logits[region_slices(region)] > 0).numpy())
        for o_lo, inside in prompts.outlines:  # filled lassos: the part of each inside this region
            a = np.maximum(np.asarray(o_lo), lo)
            b = np.minimum(np.asarray(o_lo) + inside.shape, hi)
            if np.all(a < b):
                src = inside[tuple(slice(int(x - o), int(y - o)) for x, y, o in zip(a, b, o_lo))]
                dst = out[BOX][tuple(slice(int(x - l), int(y - l)) for x, y, l in zip(a, b, lo))]
                dst[torch.from_numpy(np.ascontiguousarray(src))] = 1
        return out

    def _predict_region(self, prompts: _Prompts, region: Region) -> torch.Tensor:
        x = torch.cat([self._data[(slice(None), *region_slices(region))], *self._region_positions(region),
                       self._region_channels(prompts, region)], 0)
        t0 = time.perf_counter()
        with torch.no_grad(), self.predictor._object_output(), self._conditioning(prompts):
            logits = self.predictor.predict_sliding_window_return_logits(x).float().cpu()
        self.last_network_ms = (self.last_network_ms or 0.0) + 1000 * (time.perf_counter() - t0)
        return logits[1] - logits[0]

    def _region_positions(self, region: Region) -> list:
        """Models of text and prompts that read position channels: those of the region within the whole image, which
        go between the image and the prompt channels (the predictor would place a region's own after them)."""
        if not (self.takes_text and self.takes_prompts and self.predictor.position_channels):
            return []
        from nnunet_prompt.text.image_position import position_channels
        return [torch.from_numpy(position_channels(tuple(self._grid.shape), region_slices(region)))]

    @contextmanager
    def _conditioning(self, prompts: _Prompts):
        """Models of text and prompts: the session's text (none yet: empty, the prompts alone) and target label; the
        region's position channels are in its input already (``_region_positions``)."""
        if not (self.takes_text and self.takes_prompts):
            yield
            return
        if self.target_label is None:
            raise ValueError("This model segments one label at a time and the dataset has several: call "
                             "set_target_label(name) first.")
        given, self.predictor.position_channels = self.predictor.position_channels, 0
        try:
            with unwrap(self.predictor.network).conditioned_on([{"text": prompts.text or ""}],
                                                               targets=[self.target_label]):
                yield
        finally:
            self.predictor.position_channels = given

    def _commit(self, prompts: _Prompts, region: Region, logits: Optional[torch.Tensor],
                before_logits: Optional[torch.Tensor] = None) -> None:
        """Write a region's new logits, bring that region alone back to the image grid, and record the undo."""
        sl = region_slices(region)
        old_logits = (before_logits if before_logits is not None else self._logits)[sl].clone()
        if logits is not None:
            self._logits[sl] = logits
        raw_box, raw = self._export.object_mask(self._logits, region)
        if self.keep_undo:
            self._history.append(_Change(self._prompts, region, old_logits, raw_box,
                                         self._mask[box_slices(raw_box)].copy()))
        self._mask[box_slices(raw_box)] = raw
        self._prompts = prompts
        self.last_region = region
        self.last_changed_box = self.last_predicted_box = raw_box

    def _interact(self, prompts: _Prompts, center, z_range: Tuple[int, int], run_prediction: bool,
                  return_mask: bool):
        if not run_prediction:  # queue it: predict() runs the queued interactions at once, around the latest
            if self._pending is not None:
                z_range = (min(z_range[0], self._pending[2][0]), max(z_range[1], self._pending[2][1]))
            self._pending = (prompts, np.asarray(center, dtype=float), z_range)
            self.last_changed_box = None
            return self._result(return_mask)
        self._pending = None
        t0 = time.perf_counter()
        self.last_network_ms = 0.0
        shape = self._grid.shape
        if self.slice_wise:  # the prompt's slices, whole; growth only in-plane (there is nothing to grow)
            z0, z1 = max(0, z_range[0]), min(int(shape[0]), z_range[1])
            region = ((z0, 0, 0), (z1, int(shape[1]), int(shape[2])))
            growth = [0, 0, 0]
        else:
            region = region_around(center, self.patch, shape)
            growth = self.patch
        max_growth = self.max_growth if self.grow else 0
        for attempt in range(max_growth + 1):
            diff = self._predict_region(prompts, region)
            bigger = grown_region(region, (diff > 0).numpy(), growth, shape) if attempt < max_growth else None
            if bigger is None:
                break
            region = bigger
        self._commit(prompts, region, diff)
        self.last_latency_ms = 1000 * (time.perf_counter() - t0)
        return self._result(return_mask)

    def _interact_cross_patch(self, prompts: _Prompts, center) -> None:
        """A positive click with cross-patch propagation: the patch around it, then the proposed neighbours."""
        t0 = time.perf_counter()
        self.last_network_ms = 0.0
        shape = self._grid.shape
        before_logits = self._logits.clone()
        region = region_around(center, self.patch, shape)
        self._logits[region_slices(region)] = self._predict_region(prompts, region)

        def segment(r, click):
            prompts.proposed.append(np.asarray(click, dtype=float))
            return self._predict_region(prompts, r)

        self.last_propagation = self.cross_patch.run(self._data, self._logits, region, segment)
        self._commit(prompts, bounding_region(self.last_propagation.regions), None, before_logits)
        self.last_latency_ms = 1000 * (time.perf_counter() - t0)

"""Prompted prediction as a subclass of nnU-Net's predictor.

nnU-Net keeps doing the preprocessing, sliding-window inference, mirroring, fold ensembling and
export. This class only appends prompt channels to each case's preprocessed image:

* ``prepare_case_prompts`` validates a case's prompts against its image and maps them exactly onto the
  preprocessed grid (``PreprocessedGrid``);
* ``predict_prompted_logits`` runs one sliding-window pass per prompted label. Each pass gives a
  binary (background, object) output; the object-vs-background logit difference of label L becomes
  channel L of a multi-class logit map whose background channel is 0 and whose unprompted labels are
  ``UNPROMPTED_LOGIT``. nnU-Net's own export then resamples that map and takes the argmax, so where
  prompted objects overlap the more confident one wins. In a region dataset a prompt addresses a region
  and the map has nnU-Net's region channels instead (``nnunet_prompt.prompts.regions_or_labels``).

With ``enable_cross_patch`` (models trained with PSAPTrainer_CPP, ``nnunet-prompt predict --cross-patch``) a
label's logits come from the patches around its positive clicks and the neighbouring patches the model's
cross-patch prompt head proposes (``nnunet_prompt.inference.cross_patch``) instead of a sliding window over
the whole image; voxels no patch reached are background.

Text-conditioned models (a ``clinical_context`` in the model's plans record, see ``nnunet_prompt.model_record``)
take no prompt channels: each case's clinical entry (the prompt's ``text``, or an entry of a clinical-text sidecar
given with ``set_clinical_text``) conditions the network during nnU-Net's ordinary prediction of the dataset's label
map. Models with both (TextAndPromptTrainer) are prompted per label, each pass conditioned on the case's text as well
(``nnunet_prompt.inference.text_and_prompts``).

The network is rebuilt by nnU-Net's own ``initialize_from_trained_model_folder`` from the model's plans.json alone;
this class reads the prompt layout or the context encoder from the same record.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Dict, Optional

import numpy as np
import torch

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_prompt.inference.cross_patch import CrossPatchPropagator, require_cross_patch_head
from nnunet_prompt.inference.prompt_kinds import kinds_given, kinds_read, refuse_unread
from nnunet_prompt.inference import text_and_prompts
from nnunet_prompt.model_record import record_from_plans
from nnunet_prompt.networks.contract import object_label_manager, unwrap, used_prompt_channels
from nnunet_prompt.prompts.encoding import MASK, POS, PromptEncoding, ball_radius_voxels, draw_balls, encode_preprocessed
from nnunet_prompt.prompts.geometry import ImageGeometry, PreprocessedGrid, case_volume_spacing
from nnunet_prompt.prompts.model import PromptError, PromptsByCase
from nnunet_prompt.prompts.regions_or_labels import UNPROMPTED_LOGIT, logit_channel, prompt_targets, unprompted_logits  # noqa: F401 (UNPROMPTED_LOGIT re-exported)
from nnunet_prompt.prompts.regions import region_around, region_slices
from nnunet_prompt.text.config import ClinicalContextConfig

UNREACHED_LOGIT = -10.0  # cross-patch prediction: voxels outside every predicted patch (as the session's background)


def check_checkpoint_file(path: str) -> None:
    """A clear error for a truncated, empty or foreign checkpoint, before torch.load fails with a zip error that
    names no file. torch saves a zip archive; its CRCs tell whether every byte is there."""
    import zipfile
    fix = "Copy it again from where the model was trained, or choose another checkpoint with -chk."
    if not zipfile.is_zipfile(path):
        raise PromptError(f"Checkpoint '{path}' cannot be read: it is not a PyTorch checkpoint (empty, truncated or "
                          f"another file). {fix}")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise PromptError(f"Checkpoint '{path}' cannot be read ({e}). {fix}") from None
    if bad is not None:
        raise PromptError(f"Checkpoint '{path}' cannot be read: its part '{bad}' is damaged. {fix}")


def input_cases(source_folder: str, dataset_json: dict) -> Dict[str, list]:
    """{case: its channel files, sorted} of an nnU-Net input folder (CASE_XXXX.ending), with a clear error for a
    missing folder, no images, or a file without the 4-digit channel suffix (nnU-Net would fail on it)."""
    import re
    ending = dataset_json['file_ending']
    if not os.path.isdir(source_folder):
        raise PromptError(f"Input folder '{source_folder}' does not exist (-i).")
    names = sorted(f for f in os.listdir(source_folder) if f.endswith(ending))
    if not names:
        raise PromptError(f"No images ending in {ending} in '{source_folder}' (nnU-Net naming: CASE_0000{ending}).")
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending) + "$")
    cases: Dict[str, list] = {}
    for name in names:
        m = pattern.match(name)
        if m is None:
            raise PromptError(f"Image '{os.path.join(source_folder, name)}' has no channel suffix: nnU-Net input files "
                              f"are named CASE_0000{ending} (CASE_0001{ending} for a second channel). Rename it.")
        cases.setdefault(m.group(1), []).append(os.path.join(source_folder, name))
    return cases


class PromptPredictor(nnUNetPredictor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompt_encoding: Optional[PromptEncoding] = None
        self.case_prompts: PromptsByCase = {}
        self.prompts_source: Optional[str] = None
        self.allow_missing_prompts = False
        self._current_case_channels: Optional[Dict[int, torch.Tensor]] = None
        self.clinical_context: Optional[ClinicalContextConfig] = None  # set for text-conditioned models
        self.clinical_entries: Dict[str, dict] = {}
        self.clinical_source: Optional[str] = None
        self._current_case_entry: Optional[dict] = None
        self.cross_patch: Optional[CrossPatchPropagator] = None
        self._current_case: Optional[str] = None
        self._current_case_clicks: Dict[int, list] = {}  # label -> positive clicks on the preprocessed grid
        self._tile_prompts = self._tile_slicers = self._padded_prompts = None  # see _prompt_channels_per_tile
        # case -> network time (seconds, preprocessing and export excluded), slices (the first axis of the
        # preprocessed grid, which a 2d configuration predicts one by one) and boxes given: ``timing_record``
        self.case_timing: Dict[str, dict] = {}
        self.prompt_channels_used: Optional[tuple] = None  # channel names the network reads (None: all)
        # text models that read where a tile lies in the image (nnunet_prompt.text.image_position): each tile gets
        # its position channels after the image channels; _position_shape is the unpadded image's, per pass
        self.position_channels = 0
        self._position_shape = None

    # -------------------------------------------------------------- set-up
    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds=None,
                                             checkpoint_name: str = 'checkpoint_final.pth'):
        from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
        ensure_trainer_path_registered()  # our trainers are found without the user exporting nnUNet_extTrainer
        if not os.path.isdir(model_training_output_dir):
            raise FileNotFoundError(f"No trained model at '{model_training_output_dir}': check -d, -tr, -p and -c.")
        available = sorted(d for d in os.listdir(model_training_output_dir) if d.startswith("fold_"))
        for f in use_folds or []:
            if not os.path.isfile(os.path.join(model_training_output_dir, f"fold_{f}", checkpoint_name)):
                raise FileNotFoundError(f"Model '{model_training_output_dir}' has no fold_{f}/{checkpoint_name} "
                                        f"(folds present: {available}). Train that fold or pick another with -f / -chk.")
        import json
        for name in ("plans.json", "dataset.json"):
            path = os.path.join(model_training_output_dir, name)
            try:
                with open(path, "r", encoding="utf-8") as f:
                    content = json.load(f)
            except FileNotFoundError:
                raise FileNotFoundError(f"Model '{model_training_output_dir}' has no {name}: it is not a complete "
                                        f"nnU-Net model folder.") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise PromptError(f"'{path}' is not valid JSON ({e}): the model folder is damaged. Copy it again from "
                                  f"where it was trained.") from None
            if name == "plans.json":
                # before nnU-Net builds the network from these plans: one clear message for an old or foreign model
                record = record_from_plans(content, model_training_output_dir)
        for f in use_folds or []:
            check_checkpoint_file(os.path.join(model_training_output_dir, f"fold_{f}", checkpoint_name))
        if record.prompt_encoding is None and record.clinical_context is None:
            raise PromptError(f"Model '{model_training_output_dir}' ({record.trainer}) takes no prompts: predict it with "
                              f"plain nnUNetv2_predict.")
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        # the prompt layout / context encoder the model was trained with, not whatever the trainer code says today
        self.prompt_encoding = (None if record.prompt_encoding is None
                                else PromptEncoding.from_dict(record.prompt_encoding))
        self.clinical_context = (None if record.clinical_context is None
                                 else ClinicalContextConfig.from_dict(record.clinical_context))
        self.prompt_channels_used = used_prompt_channels(record) if record.prompt_encoding is not None else None
        self.position_channels = 0 if self.clinical_context is None else self.clinical_context.position_channels

    def enable_cross_patch(self, model_folder: str, threshold: float = 0.5, max_patches: int = 27) -> None:
        """Predict each prompted label by cross-patch propagation from its positive clicks (one fold only)."""
        if self.list_of_parameters is not None and len(self.list_of_parameters) != 1:
            raise PromptError(f"--cross-patch predicts with one fold (-f F); {len(self.list_of_parameters)} were given.")
        try:
            head = require_cross_patch_head(unwrap(self.network), model_folder)
        except ValueError as e:
            raise PromptError(str(e)) from None
        if self.list_of_parameters is not None:
            self.network.load_state_dict(self.list_of_parameters[0])
        self.network.eval()
        self.cross_patch = CrossPatchPropagator(head, threshold, max_patches, device=self.device)

    def set_prompts(self, prompts: PromptsByCase, source: Optional[str] = None, allow_missing: bool = False):
        self.case_prompts = prompts
        self.prompts_source = source
        self.allow_missing_prompts = allow_missing

    def set_clinical_text(self, entries: Dict[str, dict], source: Optional[str] = None):
        """Per-case clinical entries (the clinical-text sidecar format) for text-conditioned models; a
        prompt's own ``text`` takes precedence over the entry's."""
        self.clinical_entries = entries
        self.clinical_source = source

    def case_clinical_entry(self, case: str) -> dict:
        """The clinical entry a text-conditioned model gets for a case; a clear error if there is none."""
        entry = dict(self.clinical_entries.get(case, {}))
        texts = [p.text for p in self.case_prompts.get(case, []) if p.text is not None]
        if len(texts) > 1:
            raise PromptError(f"Case '{case}' has {len(texts)} prompts with 'text' in '{self.prompts_source}'; a "
                              f"text-conditioned model takes one text per case.")
        if texts:
            entry["text"] = texts[0]
        key = self.clinical_context.entry_key
        if key not in entry and not self.allow_missing_prompts:
            where = " or ".join(f"'{s}'" for s in (self.prompts_source, self.clinical_source) if s) or "the input"
            fix = ("a \"text\" in its prompt" if key == "text" else
                   "an entry with \"fields\" in a clinical-text sidecar (--clinical-text)")
            raise PromptError(f"Case '{case}' has no clinical {key} in {where}; this model (trained with "
                              f"{self.clinical_context.kind} context) needs {fix}, or pass --allow-missing-prompts.")
        for p in self.case_prompts.get(case, []):
            self.check_prompt_kinds(p, case)  # points or a box beside the text would be dropped
        if key not in entry:
            return {"text": "", "fields": {}}
        return entry

    def check_prompts_for_images(self, source_folder: str) -> None:
        """Validate the input folder, every image file and every case's prompts before anything is predicted, so
        a bad prompt or a damaged file of the last case does not leave the first cases' outputs behind."""
        from nnunet_prompt.image_files import ImageFileError, check_image_file
        labels = prompt_targets(self.dataset_json)
        files = input_cases(source_folder, self.dataset_json)
        unknown = sorted(set(self.case_prompts) - set(files))
        listed = f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
        if unknown and not set(self.case_prompts) & set(files):
            raise PromptError(f"No entry of prompts file '{self.prompts_source}' names a case in '{source_folder}' (e.g. "
                              f"{listed}; the images are {sorted(files)[:5]}). Check the case identifiers (CASE of "
                              f"CASE_0000{self.dataset_json['file_ending']}) and -i.")
        n_channels = len(self.dataset_json['channel_names'])
        for case, case_files in files.items():
            if len(case_files) != n_channels:
                raise PromptError(f"Case '{case}' in '{source_folder}' has {len(case_files)} channel file(s), the model "
                                  f"expects {n_channels} ({self.dataset_json['channel_names']}): CASE_0000, CASE_0001, ...")
            for f in case_files:
                try:
                    check_image_file(f)
                except ImageFileError as e:
                    raise PromptError(f"Case '{case}': {e}") from None
            if text_and_prompts.takes_text_and_prompts(self):
                text_and_prompts.check_case(self, case, case_files[0])
                continue
            if self.clinical_context is not None:
                self.case_clinical_entry(case)
                continue
            prompts = self.case_prompts.get(case)
            if prompts is None:
                if self.allow_missing_prompts:
                    continue
                self._missing(case)
            geometry = ImageGeometry.from_file(case_files[0])
            seen = set()
            for p in prompts:
                p.require_location(case, self.prompts_source)
                self.check_prompt_kinds(p, case)
                label = p.resolve_label(labels, case, self.prompts_source)
                if label in seen:
                    raise PromptError(f"Case '{case}' has two prompts for label {label} in '{self.prompts_source}'; "
                                      f"merge them into one prompt.")
                seen.add(label)
                p.to_voxel(geometry, case, self.prompts_source)
        if unknown:  # a dataset's prompts file used for a subset of its cases: said, not silently ignored
            import sys
            print(f"nnunet-prompt: note: prompts file '{self.prompts_source}' has entries for {len(unknown)} case(s) "
                  f"with no image in '{source_folder}', not predicted: {listed}", file=sys.stderr)

    def check_prompt_kinds(self, prompt, case: str) -> None:
        """Refuse what the network would ignore (text given to a spatial model, points or a box given to a text
        model, clicks or a mask given to a box-only model), instead of dropping it (``prompt_kinds``)."""
        key = self.clinical_context.entry_key if self.clinical_context is not None else None
        if key is None and self.prompt_channels_used is None:
            return  # not initialised from a model folder: nothing to check against
        read = kinds_read(self.prompt_channels_used, key)
        # box-only prompts are what boxes-from-labels writes
        hint = " (e.g. write them with `nnunet-prompt boxes-from-labels`)" if read == {"boxes"} else ""
        refuse_unread(kinds_given(prompt), read, key, self.trainer_name,
                      f"Case '{case}' in prompts file '{self.prompts_source}'",
                      "Remove {kinds} from the case's prompts" + hint)

    def _missing(self, case: str):
        raise PromptError(f"No prompt for case '{case}' in prompts file '{self.prompts_source}'. Add an entry "
                          f"\"{case}\": {{...}}, or pass --allow-missing-prompts to predict such cases as background.")

    # ---------------------------------------------------------- per case
    def prepare_case_prompts(self, case: str, preprocessed_shape, properties: dict,
                             prompts=None) -> Dict[int, torch.Tensor]:
        """Validate a case's prompts (``prompts``, else those set for it) and encode them on its preprocessed grid:
        {label value: channels}."""
        prompts = self.case_prompts.get(case) if prompts is None else prompts
        if prompts is None:
            if self.allow_missing_prompts:
                return {}
            self._missing(case)
        grid = PreprocessedGrid(properties, self.plans_manager.transpose_forward, preprocessed_shape)
        geometry = ImageGeometry.from_nnunet_properties(properties, grid.raw_shape_zyx)
        labels = prompt_targets(self.dataset_json)
        out: Dict[int, torch.Tensor] = {}
        self._current_case, self._current_case_clicks = case, {}
        spacing = case_volume_spacing(self.configuration_manager.spacing, properties, self.plans_manager.transpose_forward)
        for p in prompts:
            self.check_prompt_kinds(p, case)
            label = p.resolve_label(labels, case, self.prompts_source)
            if label in out:
                raise PromptError(f"Case '{case}' has two prompts for label {label} in '{self.prompts_source}'; "
                                  f"merge them into one prompt.")
            vp = p.to_voxel(geometry, case, self.prompts_source)
            self._current_case_clicks[label] = [grid.raw_to_preprocessed(x) for x in vp.positive_points]
            mask = None
            if vp.mask is not None:
                mask = grid.mask_to_preprocessed(vp.mask, self.configuration_manager, properties["spacing"])
            out[label] = encode_preprocessed(
                grid.shape, spacing, self.prompt_encoding,
                positive=[grid.raw_to_preprocessed(x) for x in vp.positive_points],
                negative=[grid.raw_to_preprocessed(x) for x in vp.negative_points],
                boxes=[grid.box_to_preprocessed(b.min, b.max) for b in vp.boxes],
                mask=mask, dtype=torch.uint8)
        return out

    @contextmanager
    def _object_output(self):
        """nnU-Net's sliding window sizes its output from ``label_manager``; while one prompted object is
        predicted, the network has two outputs (background, object), whatever the dataset's classes."""
        dataset_labels = self.label_manager
        self.label_manager = object_label_manager()
        try:
            yield
        finally:
            self.label_manager = dataset_labels

    def predict_prompted_logits(self, data: torch.Tensor, channels_by_label: Dict[int, torch.Tensor]) -> torch.Tensor:
        """data: (C_img, *spatial) preprocessed image -> (num_classes, *spatial) logits (see module doc).
        channels_by_label: {label value, or region (tuple of label values) in a region dataset: prompt channels}."""
        # half precision, as nnU-Net's own sliding-window logits: a whole CT's map costs what nnU-Net's does
        out = unprompted_logits(self.label_manager, data.shape[1:], torch.half)
        for label, channels in channels_by_label.items():
            c = logit_channel(self.label_manager, label)
            if self.cross_patch is not None:
                out[c] = self.cross_patch_logits(data, channels, self._current_case_clicks.get(label, []), label)
                continue
            with self._object_output(), self._prompt_channels_per_tile(channels), \
                    text_and_prompts.label_conditioning(self, label):
                if self.list_of_parameters is None:  # manual_initialization: weights already in the network
                    logits = self.predict_sliding_window_return_logits(data.float())
                else:
                    logits = super().predict_logits_from_preprocessed_data(data.float())
            out[c] = (logits[1].float() - logits[0].float()).cpu()
            del logits
        return out

    @contextmanager
    def _prompt_channels_per_tile(self, channels: torch.Tensor):
        """nnU-Net's sliding window sees the image channels only; each tile gets its prompt channels appended when
        it reaches the network. A whole-image (image + prompts) float tensor would cost (1 + C_prompt) times the
        image's memory on a 512x512x300 CT; the 0/1 channels are kept as uint8 and cut per tile instead. The
        tiles reach ``_internal_maybe_mirror_and_predict`` in the order of ``_internal_get_sliding_window_slicers``
        (nnU-Net's one producer thread and FIFO queue), so the n-th call gets the n-th slicer."""
        binary = channels.dtype in (torch.uint8, torch.bool) or bool(((channels == 0) | (channels == 1)).all())
        compact = channels.to(torch.uint8 if binary else torch.half).cpu()
        self._tile_prompts, self._tile_slicers, self._tile_index = compact, None, 0
        try:
            yield
        finally:
            self._tile_prompts = self._tile_slicers = self._padded_prompts = None

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        if not self.position_channels:
            return super().predict_sliding_window_return_logits(input_image)
        self._position_shape = tuple(int(n) for n in input_image.shape[1:])
        try:
            return super().predict_sliding_window_return_logits(input_image)
        finally:
            self._position_shape = None
            if self._tile_prompts is None:
                self._tile_slicers = None

    def _internal_get_sliding_window_slicers(self, image_size):
        slicers = super()._internal_get_sliding_window_slicers(image_size)
        if self._tile_prompts is not None:
            from acvl_utils.cropping_and_padding.padding import pad_nd_image
            # padded as nnU-Net padded the image (to at least the patch size), so the slicers fit both
            self._padded_prompts = pad_nd_image(self._tile_prompts, self.configuration_manager.patch_size, 'constant',
                                                {'value': 0}, False, None)
            assert tuple(self._padded_prompts.shape[1:]) == tuple(image_size), (self._padded_prompts.shape, image_size)
        if self._tile_prompts is not None or self._position_shape is not None:
            self._tile_slicers, self._tile_index, self._padded_size = list(slicers), 0, tuple(image_size)
        return slicers

    def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
        # nnU-Net retries a pass on the CPU after an error on the device (out of memory, inf), with the same
        # slicers and without asking for them again: every pass starts at the first tile
        self._tile_index = 0
        return super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        # per tile: image, position channels (text models that read them), prompt channels (prompt models)
        if self._tile_slicers is not None:
            sl = self._tile_slicers[self._tile_index]
            self._tile_index += 1
            extra = []
            if self._position_shape is not None:
                from nnunet_prompt.text.image_position import tile_position
                extra.append(torch.from_numpy(tile_position(sl, self._position_shape, self._padded_size))[None])
            if self._tile_prompts is not None:
                extra.append(self._padded_prompts[sl][None])
            x = torch.cat([x] + [e.to(device=x.device, dtype=x.dtype, non_blocking=True) for e in extra], 1)
        return super()._internal_maybe_mirror_and_predict(x)

    def cross_patch_logits(self, data: torch.Tensor, channels: torch.Tensor, clicks, label: int) -> torch.Tensor:
        """Object logits of one label from the patch around each positive click and the patches the CPP head
        proposes from there; proposed clicks are drawn into the positive-click channel, the result so far is
        each patch's mask prompt."""
        if not clicks:
            raise PromptError(f"--cross-patch starts from positive clicks, and the prompt of case '{self._current_case}' "
                              f"for label {label} in '{self.prompts_source}' has none: add \"positive_points\".")
        data = data.float()
        channels = channels.to(torch.float32).cpu().clone()
        logits = torch.full(data.shape[1:], UNREACHED_LOGIT)
        patch = [int(p) for p in self.configuration_manager.patch_size]
        radius = ball_radius_voxels(self.prompt_encoding.click_radius_mm, self.configuration_manager.spacing)

        def predict(region):
            sl = region_slices(region)
            ch = channels[(slice(None), *sl)].clone()
            ch[MASK] = torch.maximum(ch[MASK], (logits[sl] > 0).float())
            with self._object_output():
                out = self.predict_sliding_window_return_logits(torch.cat([data[(slice(None), *sl)], ch], 0)).float().cpu()
            return out[1] - out[0]

        def segment(region, click):
            draw_balls(channels[POS], torch.tensor([click], dtype=torch.float32), radius)
            return predict(region)

        for click in clicks:
            region = region_around(click, patch, data.shape[1:])
            sl = region_slices(region)
            logits[sl] = torch.maximum(logits[sl], predict(region))
            self.cross_patch.run(data, logits, region, segment)
        return logits

    # ----------------------------------------------- hooks into nnU-Net's loop
    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 3):
        def with_prompts(iterator):
            for item in iterator:
                if item['ofile'] is None:
                    raise ValueError("Prompted prediction needs output file names: the case identifier selects the "
                                     "prompts.")
                case = os.path.basename(item['ofile'])
                data = item['data']
                shape = np.load(data, mmap_mode='r').shape if isinstance(data, str) else data.shape
                self._current_case = case
                if text_and_prompts.takes_text_and_prompts(self):
                    self._current_case_entry, self._current_case_channels = text_and_prompts.prepare_case(
                        self, case, shape[1:], item['data_properties'])
                elif self.clinical_context is not None:
                    self._current_case_entry = self.case_clinical_entry(case)
                else:
                    self._current_case_channels = self.prepare_case_prompts(case, shape[1:], item['data_properties'])
                yield item

        try:
            return super().predict_from_data_iterator(with_prompts(data_iterator), save_probabilities,
                                                      num_processes_segmentation_export)
        finally:
            self._current_case_channels = None
            self._current_case_entry = None

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        logits = self._predict_case_logits(data)
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        if self._current_case is not None:
            prompts = self.case_prompts.get(self._current_case, [])
            seconds, slices, labels = time.perf_counter() - t0, int(data.shape[1]), max(len(prompts), 1)
            entry = {"seconds": seconds, "slices": slices, "boxes": sum(len(p.boxes) for p in prompts),
                     "labels": labels}
            if len(self.configuration_manager.patch_size) == 2:  # each prompted label's pass predicts every slice
                entry.update(boxes=self._slice_box_count(), seconds_per_slice=seconds / (slices * labels))
            self.case_timing[self._current_case] = entry
        return logits

    def _slice_box_count(self) -> int:
        """2D boxes of the current case: 8-connected components of its box channels on each slice (a 3D box of
        the prompts file over n slices is n boxes for a 2d model, as the MedSAM study counts them)."""
        channels = self._current_case_channels or {}
        if self.prompt_encoding is None or "box" not in self.prompt_encoding.channels:
            return 0
        from scipy.ndimage import label as components
        in_plane = np.zeros((3, 3, 3), bool)
        in_plane[1] = True  # within a slice, never across slices
        box = self.prompt_encoding.channels.index("box")
        return sum(int(components(ch[box].cpu().numpy() > 0, structure=in_plane)[1]) for ch in channels.values())

    def timing_record(self) -> dict:
        """What ``nnunet-prompt predict`` writes as OUTPUT/timing.json (read by ``nnunet-prompt compare``)."""
        return {"unit": "seconds", "device": str(self.device), "tile_step_size": self.tile_step_size,
                "mirroring": bool(self.use_mirroring),
                "what": "network time per case (sliding window over all slices, every prompted label), preprocessing "
                        "and export excluded; slices = extent of the preprocessed grid's first axis",
                "cases": dict(sorted(self.case_timing.items()))}

    def _predict_case_logits(self, data: torch.Tensor) -> torch.Tensor:
        if self.clinical_context is not None and self.prompt_encoding is None:
            if self._current_case_entry is None:
                raise RuntimeError("Text-conditioned prediction needs clinical text: call it through "
                                   "predict_from_files after set_prompts() / set_clinical_text().")
            with unwrap(self.network).conditioned_on([self._current_case_entry]):
                return super().predict_logits_from_preprocessed_data(data)
        if self._current_case_channels is None:
            raise RuntimeError("PromptPredictor needs prompts: call it through predict_from_files after set_prompts().")
        return self.predict_prompted_logits(data, self._current_case_channels)

"""One case: load it through its format module, put everything on the reference grid, map and merge the
structures, write the images, the label map and the per-patient structure report into the temporary dataset."""
from __future__ import annotations

import csv
import importlib
import os
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from nnunet_prompt_datasets.case_model import CaseRef, ConvertOptions, LoadedCase
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.image_io import resample_onto
from nnunet_prompt_datasets.label_merge import combination_codes, merge_by_priority
from nnunet_prompt_datasets.rgb_fusion import fuse_rgb
from nnunet_prompt_datasets.structure_map import StructureMap

REPORT_FOLDER = "conversion_report"     # at the raw dataset root, where nnU-Net ignores extra files
CODES_FOLDER = ".combination_codes"     # scratch for --overlap regions, removed before the rename
REPORT_COLUMNS = ["structure", "status", "label", "voxels", "file", "note"]


def format_module(name: str):
    return importlib.import_module(f"nnunet_prompt_datasets.format_{name.replace('-', '_')}")


def _as_array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _map_structures(case: CaseRef, loaded: LoadedCase, reference: sitk.Image, smap: StructureMap,
                    options: ConvertOptions, empty_means_absent: bool):
    """Masks per label on the reference grid, plus the report rows (found / mapped / unmapped / missing)."""
    rows: List[dict] = []
    masks: Dict[str, np.ndarray] = {}
    for name in sorted(loaded.structures):
        mask_image, file = loaded.structures[name]
        label = smap.match(name)
        if label is None:
            if options.strict:
                raise ConversionError(f"structure '{name}' matches no label of the structure map ({smap.source}).",
                                      case.case_id, file, "add it as an alias in your --structure-map YAML, or drop --strict "
                                      "to ignore unmapped structures (they are listed in the conversion report).")
            rows.append({"structure": name, "status": "unmapped", "label": "", "voxels": "", "file": file, "note": ""})
            continue
        mask = _as_array(resample_onto(mask_image, reference, is_mask=True)) > 0
        voxels = int(mask.sum())
        if voxels == 0 and not empty_means_absent:
            raise ConversionError(f"structure '{name}' (label {label}) is empty on the reference image.", case.case_id,
                                  file, "delete the empty structure in the source or fix its contours; an empty "
                                  "structure cannot be told from a contour that was lost.")
        rows.append({"structure": name, "status": "mapped" if voxels else "mapped-empty", "label": label,
                     "voxels": voxels, "file": file, "note": ""})
        masks[label] = masks[label] | mask if label in masks else mask
    for label in smap.names:
        if label not in masks:
            rows.append({"structure": "", "status": "missing", "label": label, "voxels": 0, "file": "",
                         "note": "not contoured or absent (a label map cannot tell these apart)"})
    names = list(masks)
    for i, a in enumerate(names):     # say where structures overlap, whatever the policy does with it
        for b in names[i + 1:]:
            n = int(np.logical_and(masks[a], masks[b]).sum())
            if n:
                rows.append({"structure": "", "status": "overlap", "label": f"{a}+{b}", "voxels": n, "file": "",
                             "note": f"overlap policy: {options.overlap}"})
    return masks, rows


def _check_label_map(case: CaseRef, label: np.ndarray, allowed: int, file: str) -> None:
    values = np.unique(label)
    bad = [int(v) for v in values if v < 0 or v > allowed or v != int(v)]
    if bad:
        raise ConversionError(f"label map holds values {bad}, but the labels of this dataset are 0..{allowed} "
                              f"(label values must be consecutive).", case.case_id, file,
                              "relabel the file to consecutive values, or fix the dataset's label list.")


def convert_case(format_name: str, case: CaseRef, options: ConvertOptions, smap: StructureMap, out_folder: str) -> dict:
    fmt = format_module(format_name)
    loaded = fmt.load_case(case, options)
    modalities = [m for m, _, _ in loaded.images]
    if options.rgb_fusion and "CT" not in modalities:
        raise ConversionError(f"--rgb-fusion needs a CT image; this case has {modalities}.", case.case_id, case.source,
                              "convert without --rgb-fusion.")
    reference = loaded.images[0][1]
    arrays = {}
    for modality, image, file in loaded.images:
        on_grid = resample_onto(image, reference, is_mask=False, default_value=-1024.0 if modality.startswith("CT") else 0.0)
        arrays[modality] = _as_array(on_grid).astype(np.float32)
    rows: List[dict] = []
    code_written = False
    if loaded.structures is not None:
        masks, rows = _map_structures(case, loaded, reference, smap, options, getattr(fmt, "EMPTY_MASKS_MEAN_ABSENT", False))
        shape = arrays[modalities[0]].shape
        if options.overlap == "regions":
            if len(smap.names) > 62:
                raise ConversionError(f"--overlap regions supports at most 62 structures, the map has {len(smap.names)}.",
                                      case.case_id, smap.source, "use --overlap priority or a smaller map.")
            os.makedirs(os.path.join(out_folder, CODES_FOLDER), exist_ok=True)
            codes = combination_codes(masks, smap.names, shape)
            np.save(os.path.join(out_folder, CODES_FOLDER, f"{case.case_id}.npy"), codes)
            code_written = True
            label = None
        else:
            label = merge_by_priority(masks, smap.labels, smap.priority, shape)
    else:
        label = _as_array(resample_onto(loaded.label, reference, is_mask=True))
        _check_label_map(case, label, len(smap.names), loaded.label_file)
        label = label.astype(np.uint8)
        for value, name in enumerate(smap.names, start=1):
            rows.append({"structure": name, "status": "label-map", "label": name, "voxels": int((label == value).sum()),
                         "file": loaded.label_file, "note": ""})
    channels = fuse_rgb(arrays) if options.rgb_fusion else [arrays[m] for m in modalities]
    for i, channel in enumerate(channels):
        sitk.WriteImage(_to_image(channel, reference), os.path.join(out_folder, "imagesTr", f"{case.case_id}_{i:04d}.nii.gz"))
    if label is not None:
        sitk.WriteImage(_to_image(label, reference), os.path.join(out_folder, "labelsTr", f"{case.case_id}.nii.gz"))
    for note in loaded.notes:
        rows.append({"structure": "", "status": "note", "label": "", "voxels": "", "file": "", "note": note})
    with open(os.path.join(out_folder, REPORT_FOLDER, f"{case.case_id}.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return {"case_id": case.case_id, "modalities": modalities, "codes": code_written}

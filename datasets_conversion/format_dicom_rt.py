"""Format `dicom-rt`: a folder per patient holding a CT series, one RTSTRUCT, and optional PET/MR series."""
from __future__ import annotations

import os
from typing import List

import numpy as np
import pydicom
import SimpleITK as sitk

from nnunet_prompt_datasets.format_layouts import LAYOUTS
from nnunet_prompt_datasets.case_model import CaseRef, ConvertOptions, LoadedCase
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.dicom_series import index_folder, read_series, series_modality
from nnunet_prompt_datasets.image_io import axis_aligned_reference, resample_onto
from nnunet_prompt_datasets.pet_suv import suv_factor
from nnunet_prompt_datasets.rtstruct import rasterise, read_contours, referenced_series_uid
from nnunet_prompt_datasets.structure_map import StructureMap

LAYOUT = LAYOUTS["dicom-rt"]
EMPTY_MASKS_MEAN_ABSENT = False


def structure_map(cases: List[CaseRef], options: ConvertOptions) -> StructureMap:
    return StructureMap.load(options.structure_map)


def _patient_id(folder: str) -> str:
    for root, _, files in os.walk(folder):
        for fn in sorted(files):
            try:
                ds = pydicom.dcmread(os.path.join(root, fn), stop_before_pixels=True, specific_tags=["PatientID"])
            except Exception:
                continue
            if getattr(ds, "PatientID", None):
                return str(ds.PatientID)
    return os.path.basename(folder)


def find_cases(source: str, options: ConvertOptions) -> List[CaseRef]:
    from nnunet_prompt_datasets.convert import safe_case_id
    cases = []
    for entry in sorted(os.listdir(source)):
        folder = os.path.join(source, entry)
        if os.path.isdir(folder) and not entry.startswith("."):
            pid = _patient_id(folder)
            cases.append(CaseRef(safe_case_id(pid), folder, {"patient_id": pid}))
    return cases


def _mr_kind(headers) -> str:
    text = " ".join(str(getattr(headers[0][1], t, "")) for t in ("SeriesDescription", "SequenceName", "ProtocolName")).lower()
    return "MR_T2" if "t2" in text else "MR_T1" if "t1" in text else "MR"


def load_case(case: CaseRef, options: ConvertOptions) -> LoadedCase:
    pid = case.case_id
    index = index_folder(case.source, pid)
    if not index["rtstructs"]:
        raise ConversionError("no RTSTRUCT found.", pid, case.source, "add the patient's RTSTRUCT file to its folder.")
    if len(index["rtstructs"]) > 1:
        raise ConversionError(f"several RTSTRUCTs found: {index['rtstructs']}.", pid, case.source,
                              "keep the one approved structure set per patient folder.")
    rt_path = index["rtstructs"][0]
    ds, contours, roi_names = read_contours(rt_path, pid)
    series_uid, sop_uids = referenced_series_uid(ds, pid, rt_path)
    if series_uid is None and sop_uids:     # some TPSs only list the referenced images
        series_uid = next((uid for uid, h in index["series"].items() if {str(d.SOPInstanceUID) for _, d in h} & set(sop_uids)), None)
    if series_uid is None or series_uid not in index["series"]:
        raise ConversionError(f"the series the RTSTRUCT references ({series_uid}) is not in the patient folder.", pid,
                              rt_path, "add the referenced CT series (SeriesInstanceUID above) to the patient folder.")
    ct_headers = index["series"][series_uid]
    if series_modality(ct_headers) != "CT":
        raise ConversionError(f"the RTSTRUCT references a {series_modality(ct_headers)} series, not a CT.", pid, rt_path,
                              "this format expects contours drawn on the planning CT.")
    ct = read_series(ct_headers, pid, options.resample_oblique)
    masks, notes = {}, []
    for number, roi_contours in contours.items():
        name = roi_names[number]
        mask, outside = rasterise(roi_contours, ct, pid, rt_path, name)
        masks[name] = masks[name] | mask if name in masks else mask     # ROIs sharing a name are united
        if outside:
            notes.append(f"{name}: {outside} contour(s) outside the CT field of view were dropped")
    structures = {name: (_mask_image(mask, ct), rt_path) for name, mask in masks.items()}
    images = [("CT", ct, ct_headers[0][0])]
    frame = str(getattr(ct_headers[0][1], "FrameOfReferenceUID", ""))
    kinds = {}
    for uid, headers in sorted(index["series"].items()):
        if uid == series_uid:
            continue
        kind = series_modality(headers)
        if kind == "CT":
            continue      # e.g. a contrast CT that the RTSTRUCT does not reference
        if kind == "MR":
            kind = _mr_kind(headers)
        if kind in kinds:
            raise ConversionError(f"two {kind} series found ({kinds[kind]} and {headers[0][0]}).", pid, headers[0][0],
                                  "keep one series per modality in the patient folder.")
        kinds[kind] = headers[0][0]
        if str(getattr(headers[0][1], "FrameOfReferenceUID", "")) != frame:
            raise ConversionError(f"the {kind} series has another frame of reference than the CT; it is not registered "
                                  f"to it and cannot simply be resampled.", pid, headers[0][0],
                                  "register it to the CT first (and export it in the CT's frame of reference).")
        image = read_series(headers, pid, options.resample_oblique)
        if kind == "PET":
            image = image * suv_factor(pydicom.dcmread(headers[0][0], stop_before_pixels=True), pid, headers[0][0])
        images.append((kind, image, headers[0][0]))
    if not _axis_aligned(ct):     # only reached with --resample-oblique (read_series refuses otherwise)
        grid = axis_aligned_reference(ct)
        images[0] = ("CT", resample_onto(ct, grid, is_mask=False, default_value=-1024.0), images[0][2])
        notes.append("oblique CT resampled onto an axis-aligned grid (--resample-oblique)")
    order = {"CT": 0, "PET": 1, "MR_T1": 2, "MR_T2": 3, "MR": 4}
    images = [images[0]] + sorted(images[1:], key=lambda x: order[x[0]])
    return LoadedCase(images=images, structures=structures, notes=notes)


def _mask_image(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def _axis_aligned(image: sitk.Image) -> bool:
    return np.allclose(np.abs(np.array(image.GetDirection()).reshape(3, 3)).max(0), 1, atol=1e-4)

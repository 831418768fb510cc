"""DICOM image series (CT, MR, PET) -> SimpleITK images, read with pydicom, with the checks clinical data needs.

Why not SimpleITK's GDCM series reader: it silently accepts gaps and uneven slice spacing and cannot say
which file is wrong. Here every failure names the file.
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Dict, List

import numpy as np
import pydicom
import SimpleITK as sitk
from scipy.ndimage import shift as nd_shift

from nnunet_prompt_datasets.conversion_errors import ConversionError

CT_UID, MR_UID, PET_UID = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.128"
RTSTRUCT_UID = "1.2.840.10008.5.1.4.1.1.481.3"
IMAGE_MODALITY = {CT_UID: "CT", MR_UID: "MR", PET_UID: "PET"}


def index_folder(folder: str, patient: str) -> Dict[str, object]:
    """Headers of every DICOM file below ``folder``: image series by SeriesInstanceUID, and RTSTRUCT files."""
    series: Dict[str, List[tuple]] = defaultdict(list)
    rtstructs = []
    for root, _, files in os.walk(folder):
        for fn in sorted(files):
            path = os.path.join(root, fn)
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue     # not DICOM (a README, a thumbnail): ignore
            sop = str(getattr(ds, "SOPClassUID", ""))
            if sop == RTSTRUCT_UID:
                rtstructs.append(path)
            elif sop in IMAGE_MODALITY:
                series[str(ds.SeriesInstanceUID)].append((path, ds))
    return {"series": dict(series), "rtstructs": sorted(rtstructs)}


def _geometry(headers: List[tuple], patient: str, resample_oblique: bool):
    first_path, first = headers[0]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise ConversionError(f"ImageOrientationPatient {orientation.tolist()} is not orthonormal.", patient, first_path,
                              "re-export the series from the scanner/TPS; a sheared grid cannot be converted reliably.")
    for p, ds in headers:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], orientation, atol=1e-4):
            raise ConversionError("slices of one series have different orientations.", patient, p,
                                  "export the series again as one stack of parallel slices.")
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in headers])
    order = np.argsort(positions @ normal)
    headers = [headers[i] for i in order]
    positions = positions[order]
    distances = positions @ normal
    steps = np.diff(distances)
    if len(headers) > 1 and np.any(steps < 1e-3):
        dup = headers[int(np.argmin(steps)) + 1][0]
        raise ConversionError("two slices of the series lie at the same position.", patient, dup,
                              "remove the duplicate slice (or a second series mixed into this folder).")
    if len(steps) and (steps.max() - steps.min()) > max(0.01, 0.01 * np.median(steps)):
        where = headers[int(np.argmax(np.abs(steps - np.median(steps)))) + 1][0]
        raise ConversionError(f"inconsistent slice spacing ({steps.min():.3f} to {steps.max():.3f} mm): slices are "
                              f"missing or the series mixes stacks.", patient, where,
                              "export the complete series with one slice spacing.")
    spacing_z = float(np.median(steps)) if len(steps) else float(getattr(first, "SliceThickness", 1.0) or 1.0)
    offsets = positions - positions[0] - np.outer(distances - distances[0], normal)   # in-plane drift = gantry tilt
    tilted = bool(np.abs(offsets).max() > 1e-2)
    oblique = not all(np.isclose(np.abs(v), 1, atol=1e-4).any() for v in (row, col))
    if (tilted or oblique) and not resample_oblique:
        kind = "gantry-tilted (slices are shifted in-plane along the stack)" if tilted else \
            f"oblique (orientation {orientation.round(4).tolist()})"
        raise ConversionError(f"the series is {kind}.", patient, first_path,
                              "pass --resample-oblique to resample it onto an axis-aligned grid.")
    return headers, row, col, normal, positions, offsets, spacing_z, tilted, oblique


def read_series(headers: List[tuple], patient: str, resample_oblique: bool = False) -> sitk.Image:
    """Slices sorted along the normal; values through RescaleSlope/Intercept; tilt undone by in-plane shifts."""
    headers, row, col, normal, positions, offsets, spacing_z, tilted, _ = _geometry(headers, patient, resample_oblique)
    first_path, first = headers[0]
    dy, dx = (float(v) for v in first.PixelSpacing)       # DICOM: (between rows, between columns)
    slices = []
    for k, (path, _) in enumerate(headers):
        ds = pydicom.dcmread(path)
        try:
            a = ds.pixel_array.astype(np.float32)
        except Exception as e:
            raise ConversionError(f"cannot decode the pixel data ({e}).", patient, path,
                                  "install a pydicom pixel handler for this transfer syntax (e.g. pylibjpeg) or "
                                  "re-export uncompressed.") from None
        a = a * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
        if tilted:
            # slice k lies shifted in-plane by offsets[k]; moving it back puts it on the orthogonal grid
            a = nd_shift(a, (offsets[k] @ col / dy, offsets[k] @ row / dx), order=1, mode="constant", cval=float(a.min()))
        slices.append(a)
    image = sitk.GetImageFromArray(np.stack(slices))
    image.SetSpacing((dx, dy, spacing_z))
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetDirection(tuple(np.stack([row, col, normal], axis=1).ravel().tolist()))
    return image


def series_modality(headers: List[tuple]) -> str:
    return IMAGE_MODALITY[str(headers[0][1].SOPClassUID)]

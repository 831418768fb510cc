"""RTSTRUCT reading and contour rasterisation.

Rasterisation is hand-written because no well-kept library does it for arbitrary reference grids with the
checks we need (rt-utils and dcmrtstruct2nii rasterise onto their own reading of the series and do not report
contours that miss every slice). Rules: each planar contour is put on the slice its z position (distance along
the slice normal) falls on; a pixel belongs to a contour when its centre lies inside the polygon
(skimage.draw.polygon); nested contours of one structure on one slice are combined by XOR, so an inner
contour cuts a hole (the usual RTSTRUCT convention); pixels whose centre lies exactly on a contour line belong
to the structure (the line is its boundary; this makes contours traced through boundary pixel centres, as
mask-to-contour tools write them, round-trip exactly, and changes nothing for contours between centres); contours beyond the first or last slice are dropped and
counted, and in-plane parts outside the image are clipped.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk
from skimage.draw import line, polygon

from nnunet_prompt_datasets.conversion_errors import ConversionError

SLICE_TOLERANCE = 0.3     # contours more than this fraction of a slice off any slice plane are rejected


def referenced_series_uid(ds, patient: str, path: str) -> Tuple[Optional[str], List[str]]:
    """The SeriesInstanceUID the RTSTRUCT references, and the referenced image SOPInstanceUIDs (fallback)."""
    series_uid, sop_uids = None, []
    for frame in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
        for study in getattr(frame, "RTReferencedStudySequence", []):
            for series in getattr(study, "RTReferencedSeriesSequence", []):
                series_uid = series_uid or str(series.SeriesInstanceUID)
                sop_uids += [str(c.ReferencedSOPInstanceUID) for c in getattr(series, "ContourImageSequence", [])]
    for roi in getattr(ds, "ROIContourSequence", []):
        for contour in getattr(roi, "ContourSequence", []):
            sop_uids += [str(c.ReferencedSOPInstanceUID) for c in getattr(contour, "ContourImageSequence", [])]
    return series_uid, sop_uids


def read_contours(path: str, patient: str) -> Tuple[object, Dict[int, List[np.ndarray]], Dict[int, str]]:
    """The dataset, {ROI number: [N x 3 contour points in mm]} (closed planar contours only) and {ROI number: name}.
    Keyed by number: two ROIs may share a name, and their contours must not be XOR-ed with each other."""
    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName).strip() for r in getattr(ds, "StructureSetROISequence", [])}
    contours: Dict[int, List[np.ndarray]] = {number: [] for number in names}
    for roi in getattr(ds, "ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        if number not in names:
            raise ConversionError(f"ROIContourSequence refers to ROI number {number}, which StructureSetROISequence "
                                  f"does not declare.", patient, path, "re-export the RTSTRUCT from the TPS.")
        for contour in getattr(roi, "ContourSequence", []):
            if str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue      # POINT / OPEN_PLANAR contours enclose no volume
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64).reshape(-1, 3)
            if len(points) >= 3:
                contours[number].append(points)
    return ds, contours, names


def rasterise(contours: List[np.ndarray], reference: sitk.Image, patient: str, file: str, name: str) -> Tuple[np.ndarray, int]:
    """Boolean mask (z, y, x) on ``reference``, and the number of contours outside the field of view."""
    size = reference.GetSize()
    mask = np.zeros(size[::-1], dtype=bool)
    matrix = np.array(reference.GetDirection()).reshape(3, 3) * np.array(reference.GetSpacing())
    to_index = np.linalg.inv(matrix)
    origin = np.array(reference.GetOrigin())
    outside = 0
    edges = {}
    for points in contours:
        index = (points - origin) @ to_index.T        # continuous (x, y, z) voxel indices
        z = index[:, 2]
        k = int(np.round(z.mean()))
        if np.ptp(z) > 2 * SLICE_TOLERANCE or abs(z.mean() - k) > SLICE_TOLERANCE:
            raise ConversionError(f"a contour of '{name}' lies between image slices or is not parallel to them "
                                  f"(slice index {z.mean():.2f}).", patient, file,
                                  "check that the RTSTRUCT belongs to this CT series (or re-export the contours).")
        if k < 0 or k >= size[2]:
            outside += 1
            continue
        rr, cc = polygon(index[:, 1], index[:, 0], shape=(size[1], size[0]))
        filled = np.zeros((size[1], size[0]), dtype=bool)
        filled[rr, cc] = True
        mask[k] ^= filled
        edges.setdefault(k, []).append(index[:, :2])
    for k, polygons in edges.items():        # after all XORs of the slice: boundary pixels are structure
        for xy in polygons:
            rr, cc = _pixels_on_polygon(xy, (size[1], size[0]))
            mask[k, rr, cc] = True
    return mask, outside


def _pixels_on_polygon(xy: np.ndarray, shape) -> tuple:
    """Pixels (rows, cols) whose centres lie on the closed polygon ``xy`` (x = column, y = row), within 1e-3 px."""
    rows, cols = [], []
    for p0, p1 in zip(xy, np.roll(xy, -1, axis=0)):
        r, c = line(int(round(p0[1])), int(round(p0[0])), int(round(p1[1])), int(round(p1[0])))
        centres = np.stack([c, r], 1).astype(np.float64)
        d = p1 - p0
        length = np.hypot(*d)
        if length < 1e-9:
            on = np.hypot(*(centres - p0).T) < 1e-3
        else:
            t = (centres - p0) @ d / length ** 2
            distance = np.abs(d[0] * (centres[:, 1] - p0[1]) - d[1] * (centres[:, 0] - p0[0])) / length
            on = (distance < 1e-3) & (t >= -1e-9) & (t <= 1 + 1e-9)
        inside = on & (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
        rows.append(r[inside])
        cols.append(c[inside])
    return np.concatenate(rows), np.concatenate(cols)

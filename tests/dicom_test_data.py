"""Test inputs built with independent tools: CT (and PET) series written with pydicom, RTSTRUCTs with rt-utils."""
import os

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
STORAGE = {"CT": CT_STORAGE, "PT": PET_STORAGE, "MR": MR_STORAGE}


def write_series(folder, volume_zyx, spacing_xyz, origin, patient_id, orientation=(1, 0, 0, 0, 1, 0),
                 tilt_mm_per_slice=0.0, modality="CT", frame_uid=None, extra=None, study_uid=None):
    """One file per slice, in shuffled file-name order; returns (SeriesInstanceUID, FrameOfReferenceUID)."""
    os.makedirs(folder, exist_ok=True)
    series_uid, frame_uid, study_uid = generate_uid(), frame_uid or generate_uid(), study_uid or generate_uid()
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    order = np.random.default_rng(0).permutation(volume_zyx.shape[0])
    for k in range(volume_zyx.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = STORAGE[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, f"Test^{patient_id}", "19600101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = "20240101", "100000", "20240101", "110000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.SeriesNumber = "1", "1", "", 1
        ds.InstanceNumber = k + 1
        position = (np.array(origin, float) + k * spacing_xyz[2] * normal + k * tilt_mm_per_slice * col)
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(spacing_xyz[1]), float(spacing_xyz[0])]
        ds.SliceThickness = float(spacing_xyz[2])
        ds.Rows, ds.Columns = volume_zyx.shape[1], volume_zyx.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        if modality == "PT":
            info = pydicom.Dataset()
            info.RadionuclideTotalDose, info.RadionuclideHalfLife, info.RadiopharmaceuticalStartTime = "370000000", "6586.2", "100000"
            ds.RadiopharmaceuticalInformationSequence = pydicom.Sequence([info])
        ds.PixelData = volume_zyx[k].astype(np.int16).tobytes()
        ds.save_as(os.path.join(folder, f"img_{order[k]:03d}.dcm"), enforce_file_format=True)
    return series_uid, frame_uid


def write_rtstruct(series_folder, out_path, masks_zyx):
    """RTSTRUCT from known masks (z, y, x; z ascending along the slice normal) with rt-utils."""
    from rt_utils import RTStructBuilder
    rt = RTStructBuilder.create_new(dicom_series_path=series_folder)
    for name, mask in masks_zyx.items():
        rt.add_roi(mask=np.transpose(mask, (1, 2, 0)).astype(bool), name=name, approximate_contours=False)
    rt.save(out_path)


def ellipsoid(shape_zyx, centre_zyx, radii_zyx):
    z, y, x = np.ogrid[tuple(slice(0, s) for s in shape_zyx)]
    return (((z - centre_zyx[0]) / radii_zyx[0]) ** 2 + ((y - centre_zyx[1]) / radii_zyx[1]) ** 2
            + ((x - centre_zyx[2]) / radii_zyx[2]) ** 2) <= 1.0


def dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())

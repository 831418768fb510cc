"""`convert dicom-rt`: CT series (pydicom) + RTSTRUCT from known masks (rt-utils) -> nnU-Net raw dataset."""
import csv
import glob
import hashlib
import os
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_test_data import dice, ellipsoid, write_rtstruct, write_series
from nnunet_prompt.clinical_text import read_sidecar
from nnunet_prompt_datasets.case_model import ConvertOptions
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.convert import convert_dataset

SHAPE = (14, 56, 60)          # z, y, x
# In-plane pixels are square: rt-utils 1.2.7 multiplies the column index by PixelSpacing[0] (the row spacing),
# against DICOM PS3.3 C.7.6.2.1.1, so its contours are only right for square pixels.
SPACING = (0.8, 0.8, 2.5)     # x, y, z in mm


def known_masks():
    gtv = ellipsoid(SHAPE, (6, 28, 24), (4.6, 15, 14))
    gtv &= ~ellipsoid(SHAPE, (6, 28, 24), (1.6, 5, 5))                       # a cavity: holes on slices 5-7
    parotid = ellipsoid(SHAPE, (8, 26, 47), (3.4, 10, 8))                     # slices 5-11 only
    body = ellipsoid(SHAPE, (7, 28, 30), (7.5, 27, 29))
    return {"GTV_P": gtv, "Parotid Lt": parotid, "BODY": body}


def make_patient(root, patient_id, name=None, **series_kwargs):
    folder = os.path.join(root, name or patient_id)
    rng = np.random.default_rng(1)
    masks = known_masks()
    ct = (rng.normal(0, 20, SHAPE) + 40 * masks["BODY"] + 60 * masks["GTV_P"] - 1000 * ~masks["BODY"]).astype(np.int16)
    write_series(os.path.join(folder, "CT"), ct, SPACING, (-20.0, -30.0, 100.0), patient_id, **series_kwargs)
    write_rtstruct(os.path.join(folder, "CT"), os.path.join(folder, "RTSTRUCT.dcm"), masks)
    return folder, masks


def tree_digest(folder):
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(folder, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            h.update(path.encode())
            h.update(open(path, "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom_source")
    make_patient(str(root), "HN-001")
    make_patient(str(root), "HN-002")
    return str(root)


def no_partial_output(raw, dataset_id):
    """Neither the failed target nor a temporary folder is left behind."""
    return not os.path.exists(raw) or not [p for p in os.listdir(raw) if p.startswith((".tmp", f"Dataset{dataset_id}"))]


def test_converted_labels_match_known_masks(source, tmp_path):
    raw = str(tmp_path / "raw")
    table = tmp_path / "clinical.csv"
    table.write_text("patient_id,laterality,T,N,M,surgery\nHN-001,left,T2,N1,M0,none\nHN-002,right,T3,N0,M0,neck dissection\n")
    before = tree_digest(source)
    out = convert_dataset("dicom-rt", source, 501, "RT", raw, ConvertOptions(), clinical=str(table))
    assert tree_digest(source) == before, "the source must not change"
    import json
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["labels"]["GTVp"] == 1 and dj["labels"]["Parotid_L"] == 6 and dj["numTraining"] == 2
    assert dj["channel_names"] == {"0": "CT"}
    label = sitk.ReadImage(os.path.join(out, "labelsTr", "HN-001.nii.gz"))
    image = sitk.ReadImage(os.path.join(out, "imagesTr", "HN-001_0000.nii.gz"))
    assert np.allclose(label.GetSpacing(), SPACING) and np.allclose(label.GetOrigin(), (-20, -30, 100))
    arr = sitk.GetArrayFromImage(label)
    assert sitk.GetArrayFromImage(image).shape == SHAPE
    masks = known_masks()
    for name, value in (("GTV_P", 1), ("Parotid Lt", 6)):
        got = arr == value
        assert dice(got, masks[name]) >= 0.98, (name, dice(got, masks[name]))
        # every contour on the right slice: the same slices hold the structure
        assert (got.sum((1, 2)) > 0).tolist() == (masks[name].sum((1, 2)) > 0).tolist()
    cavity = ellipsoid(SHAPE, (6, 28, 24), (1.6, 5, 5))
    assert cavity.sum() > 50 and (arr[cavity] == 0).mean() > 0.95, "the hole must stay a hole"
    rows = list(csv.DictReader(open(os.path.join(out, "conversion_report", "HN-001.csv"))))
    status = {(r["structure"], r["status"]) for r in rows}
    assert ("BODY", "unmapped") in status and ("GTV_P", "mapped") in status
    assert any(r["status"] == "missing" and r["label"] == "Brainstem" for r in rows)
    sidecar = read_sidecar(out)
    assert sidecar["HN-001"]["text"].startswith("Left-sided tumour, cT2N1M0.")
    assert "Neck dissection" in sidecar["HN-002"]["text"] or "neck dissection" in sidecar["HN-002"]["text"]
    # idempotent: refused without --overwrite, identical with it
    with pytest.raises(ConversionError, match="exists already"):
        convert_dataset("dicom-rt", source, 501, "RT", raw, ConvertOptions())
    first = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", "HN-002.nii.gz")))
    convert_dataset("dicom-rt", source, 501, "RT", raw, ConvertOptions(), clinical=str(table), overwrite=True, num_processes=2)
    again = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", "HN-002.nii.gz")))
    assert np.array_equal(first, again)
    assert sorted(os.listdir(raw)) == ["Dataset501_RT"]


def test_strict_refuses_unmapped_names(source, tmp_path):
    raw = str(tmp_path / "raw")
    with pytest.raises(ConversionError, match=r"patient 'HN-001'.*RTSTRUCT.dcm.*'BODY'.*structure-map"):
        convert_dataset("dicom-rt", source, 502, "RT", raw, ConvertOptions(strict=True), num_processes=2)
    assert no_partial_output(raw, 502)


def expect_error(src, raw, pattern, **options):
    with pytest.raises(ConversionError, match=pattern):
        convert_dataset("dicom-rt", src, 503, "Bad", raw, ConvertOptions(**options))
    assert no_partial_output(raw, 503)


def test_bad_inputs_give_one_clear_message(source, tmp_path):
    raw = str(tmp_path / "raw")
    # duplicate patient ids: the same patient copied under another folder name
    dup = tmp_path / "dup"
    shutil.copytree(os.path.join(source, "HN-001"), dup / "HN-001")
    shutil.copytree(os.path.join(source, "HN-001"), dup / "HN-001-copy")
    expect_error(str(dup), raw, r"patient 'HN-001'.*duplicate patient id")
    # missing referenced series: CT files gone
    missing = tmp_path / "missing"
    shutil.copytree(os.path.join(source, "HN-002"), missing / "HN-002")
    shutil.rmtree(missing / "HN-002" / "CT")
    expect_error(str(missing), raw, r"patient 'HN-002', file '.*RTSTRUCT.dcm'.*series the RTSTRUCT references .* is not in the patient folder")
    # inconsistent slice spacing: one slice removed from the middle
    gap = tmp_path / "gap"
    shutil.copytree(os.path.join(source, "HN-002"), gap / "HN-002")
    for f in glob.glob(str(gap / "HN-002" / "CT" / "*.dcm")):
        if int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) == 7:
            os.remove(f)
    expect_error(str(gap), raw, r"patient 'HN-002', file '.*\.dcm'.*inconsistent slice spacing")
    # an empty structure: the contours of a mapped ROI removed (with pydicom)
    empty = tmp_path / "empty"
    shutil.copytree(os.path.join(source, "HN-002"), empty / "HN-002")
    rt_path = str(empty / "HN-002" / "RTSTRUCT.dcm")
    ds = pydicom.dcmread(rt_path)
    number = next(r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == "Parotid Lt")
    for roi in ds.ROIContourSequence:
        if roi.ReferencedROINumber == number:
            del roi.ContourSequence
    ds.save_as(rt_path)
    expect_error(str(empty), raw, r"patient 'HN-002', file '.*RTSTRUCT.dcm'.*'Parotid Lt'.*empty")
    # non-orthonormal orientation
    shear = tmp_path / "shear"
    make_patient(str(shear), "HN-009")
    for f in glob.glob(str(shear / "HN-009" / "CT" / "*.dcm")):
        d = pydicom.dcmread(f)
        d.ImageOrientationPatient = [1, 0, 0, 0.2, 0.98, 0]
        d.save_as(f)
    expect_error(str(shear), raw, r"patient 'HN-009', file '.*\.dcm'.*not orthonormal")


def test_oblique_and_tilted_series_are_refused_unless_resampling(tmp_path):
    raw = str(tmp_path / "raw")
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = tmp_path / "oblique"
    make_patient(str(oblique), "OBL-1", orientation=(c, s, 0, -s, c, 0))
    expect_error(str(oblique), raw, r"patient 'OBL-1'.*oblique.*--resample-oblique")
    out = convert_dataset("dicom-rt", str(oblique), 504, "Obl", raw, ConvertOptions(resample_oblique=True))
    label = sitk.ReadImage(os.path.join(out, "labelsTr", "OBL-1.nii.gz"))
    assert np.allclose(label.GetDirection(), np.eye(3).ravel())
    arr = sitk.GetArrayFromImage(label)
    # the resampled GTV keeps its volume (nearest neighbour onto a grid of the same spacing)
    expected = known_masks()["GTV_P"].sum()
    assert abs((arr == 1).sum() - expected) / expected < 0.05
    tilted = tmp_path / "tilted"
    make_patient(str(tilted), "TILT-1", tilt_mm_per_slice=0.7)
    expect_error(str(tilted), raw, r"patient 'TILT-1'.*gantry-tilted.*--resample-oblique")


def test_pet_and_mr_series_are_resampled_onto_the_ct(tmp_path):
    raw = str(tmp_path / "raw")
    root = tmp_path / "mm"
    folder, masks = make_patient(str(root), "MM-1")
    frame = pydicom.dcmread(glob.glob(os.path.join(folder, "CT", "*.dcm"))[0]).FrameOfReferenceUID
    # PET in Bq/ml on a coarser grid, stored with RescaleSlope 2; injected 1 h before the series start
    weight, dose, half_life, suv = 70.0, 3.7e8, 6586.2, 2.5
    activity = suv * dose * 2 ** (-3600 / half_life) / (weight * 1000)          # Bq/ml giving SUVbw 2.5
    pet = np.full((8, 20, 22), activity / 2.0, np.float32).round().astype(np.int16)
    write_series(os.path.join(folder, "PET"), pet, (2.4, 2.4, 5.0), (-22.0, -32.0, 97.5), "MM-1", modality="PT",
                 frame_uid=frame, extra={"Units": "BQML", "PatientWeight": weight, "DecayCorrection": "START",
                                         "RescaleSlope": 2})
    expected_suv = float(pet[0, 0, 0]) * 2 * weight * 1000 / (dose * 2 ** (-3600 / half_life))
    # a contour beyond the last CT slice, added with pydicom: dropped and reported
    rt_path = os.path.join(folder, "RTSTRUCT.dcm")
    ds = pydicom.dcmread(rt_path)
    roi = next(r for r in ds.ROIContourSequence if r.ReferencedROINumber ==
               next(s.ROINumber for s in ds.StructureSetROISequence if s.ROIName == "GTV_P"))
    extra = pydicom.Dataset()
    extra.ContourGeometricType, extra.NumberOfContourPoints = "CLOSED_PLANAR", 3
    extra.ContourData = [0.0, 0.0, 200.0, 5.0, 0.0, 200.0, 0.0, 5.0, 200.0]
    roi.ContourSequence.append(extra)
    ds.save_as(rt_path)
    out = convert_dataset("dicom-rt", str(root), 505, "MM", raw)
    import json
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["channel_names"] == {"0": "CT", "1": "CT"} and dj["channel_modalities"] == ["CT", "PET"]
    pet_out = sitk.ReadImage(os.path.join(out, "imagesTr", "MM-1_0001.nii.gz"))
    assert pet_out.GetSize() == SHAPE[::-1]
    assert np.allclose(sitk.GetArrayFromImage(pet_out)[2:-2, 4:-4, 4:-4], expected_suv, rtol=1e-4)
    assert abs(expected_suv - 2.5) < 0.01
    rows = list(csv.DictReader(open(os.path.join(out, "conversion_report", "MM-1.csv"))))
    assert any(r["status"] == "note" and "GTV_P: 1 contour(s) outside" in r["note"] for r in rows)
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", "MM-1.nii.gz")))
    assert dice(label == 1, masks["GTV_P"]) >= 0.98
    # RGB fusion of the same patient: G = PET clipped to 0-6 SUV, rescaled to 0-255
    out = convert_dataset("dicom-rt", str(root), 506, "MMRGB", raw, ConvertOptions(rgb_fusion=True))
    green = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "imagesTr", "MM-1_0001.nii.gz")))
    assert np.allclose(green[2:-2, 4:-4, 4:-4], expected_suv / 6 * 255, rtol=1e-4)
    # an MR series in another frame of reference cannot simply be resampled
    write_series(os.path.join(folder, "MR"), np.zeros((6, 20, 20), np.int16), (2.0, 2.0, 4.0), (-20.0, -30.0, 100.0),
                 "MM-1", modality="MR", extra={"SeriesDescription": "T1 axial"})
    expect_error(str(root), raw, r"patient 'MM-1', file '.*MR.*\.dcm'.*MR_T1 series has another frame of reference")


def test_gantry_tilt_is_undone_with_resample_oblique(tmp_path):
    """A rod parallel to the patient axis, scanned with slices shifted by one pixel row each (tilt): after
    --resample-oblique the rod lies on the same rows in every slice."""
    raw = str(tmp_path / "raw")
    folder = tmp_path / "tilt" / "TILT-2"
    shape, spacing, tilt = (8, 40, 30), (0.8, 0.8, 2.5), 0.8
    ct = np.full(shape, -1000, np.int16)
    for k in range(shape[0]):
        ct[k, 20 - k:24 - k, 10:14] = 500          # row index falls as the slice origin moves +0.8 mm in y
    write_series(str(folder / "CT"), ct, spacing, (0.0, 0.0, 0.0), "TILT-2", tilt_mm_per_slice=tilt)
    rod = np.zeros(shape, bool)
    rod[:, 20:24, 10:14] = True                    # where the rod lies on the un-sheared grid
    # rt-utils ignores the tilt when it places contours, so the contour points are rewritten with pydicom to the
    # rod's true outline (pixel centres x 8.0-10.4 mm, y 16.0-18.4 mm) on each slice
    write_rtstruct(str(folder / "CT"), str(folder / "RTSTRUCT.dcm"), {"GTVp": ct > 0})
    ds = pydicom.dcmread(str(folder / "RTSTRUCT.dcm"))
    for contour in ds.ROIContourSequence[0].ContourSequence:
        z = round(float(contour.ContourData[2]) / 2.5) * 2.5
        contour.ContourData = [8.0, 16.0, z, 10.4, 16.0, z, 10.4, 18.4, z, 8.0, 18.4, z]
        contour.NumberOfContourPoints = 4
    ds.save_as(str(folder / "RTSTRUCT.dcm"))
    out = convert_dataset("dicom-rt", str(tmp_path / "tilt"), 507, "Tilt", raw, ConvertOptions(resample_oblique=True))
    image = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "imagesTr", "TILT-2_0000.nii.gz")))
    assert np.allclose(image[rod], 500) and (image[~rod] < 0).all()
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", "TILT-2.nii.gz")))
    assert np.array_equal(label == 1, rod)


def test_mr_series_and_a_contour_partly_outside_the_image(tmp_path):
    import copy
    raw = str(tmp_path / "raw")
    root = tmp_path / "mr"
    folder, masks = make_patient(str(root), "MR-1")
    frame = pydicom.dcmread(glob.glob(os.path.join(folder, "CT", "*.dcm"))[0]).FrameOfReferenceUID
    for kind, value in (("T1", 100), ("T2", 300)):      # same frame of reference, another grid
        write_series(os.path.join(folder, kind), np.full((7, 28, 30), value, np.int16), (1.6, 1.6, 5.0),
                     (-20.4, -30.4, 98.75), "MR-1", modality="MR", frame_uid=frame,
                     extra={"SeriesDescription": f"{kind} TSE axial"})
    # a new ROI (pydicom) whose square contour on one slice runs past the image's left edge (x < -20 mm)
    rt_path = os.path.join(folder, "RTSTRUCT.dcm")
    ds = pydicom.dcmread(rt_path)
    roi_set, roi_contour = copy.deepcopy(ds.StructureSetROISequence[0]), copy.deepcopy(ds.ROIContourSequence[0])
    roi_set.ROINumber, roi_set.ROIName, roi_contour.ReferencedROINumber = 99, "GTVn", 99
    contour = roi_contour.ContourSequence[0]
    z = 100.0 + 4 * 2.5                                  # slice index 4
    contour.ContourData = [-30.0, -20.4, z, -12.0, -20.4, z, -12.0, -12.4, z, -30.0, -12.4, z]   # centres: x <= 10, rows 12-22
    contour.NumberOfContourPoints = 4
    roi_contour.ContourSequence = pydicom.Sequence([contour])
    ds.StructureSetROISequence.append(roi_set)
    ds.ROIContourSequence.append(roi_contour)
    ds.save_as(rt_path)
    out = convert_dataset("dicom-rt", str(root), 508, "MR", raw)
    import json
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["channel_modalities"] == ["CT", "MR_T1", "MR_T2"] and dj["channel_names"] == {"0": "CT", "1": "T1", "2": "T2"}
    t2 = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "imagesTr", "MR-1_0002.nii.gz")))
    assert t2.shape == SHAPE and np.allclose(t2[2:-2, 2:-2, 2:-2], 300)
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", "MR-1.nii.gz")))
    gtvn = label == dj["labels"]["GTVn"]
    # clipped at x index 0: columns 0..10 (x = -20 .. -12 mm), rows 12..22 (y = -20.4 .. -12.4 mm), slice 4 only
    expected = np.zeros(SHAPE, bool)
    expected[4, 12:23, 0:11] = True
    assert np.array_equal(gtvn, expected & ~(label == 1))      # GTVp wins where they overlap (priority)
    fused = convert_dataset("dicom-rt", str(root), 509, "MRRGB", raw, ConvertOptions(rgb_fusion=True))
    blue = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(fused, "imagesTr", "MR-1_0002.nii.gz")))
    assert blue.shape == SHAPE and 0 <= blue.min() and blue.max() <= 255

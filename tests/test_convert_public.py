"""Public dataset layouts (SegRap2023, HaN-Seg, HECKTOR 2022, TotalSegmentator, MSD) and the generic folder format,
built as tiny copies of each published layout (file names and label conventions) with SimpleITK/nibabel."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_prompt.clinical_text import read_sidecar
from nnunet_prompt_datasets.case_model import ConvertOptions
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.convert import convert_dataset

SHAPE = (10, 24, 20)   # z, y, x


def image(array, spacing=(1.5, 1.5, 3.0), origin=(0.0, 0.0, 0.0)):
    im = sitk.GetImageFromArray(array)
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    return im


def box(z, y, x, shape=SHAPE):
    m = np.zeros(shape, np.uint8)
    m[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = 1
    return m


def ct_array(seed=0):
    return (np.random.default_rng(seed).normal(40, 30, SHAPE)).astype(np.int16)


def labels_of(out):
    return json.load(open(os.path.join(out, "dataset.json")))


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def test_segrap2023_layout(tmp_path):
    # the download SegRap2023_Training_Set_120cases.zip extracts into a folder of the same name; each case folder holds
    # the two CTs and one mask per structure (names as in the organisers' evaluation: BrainStem, Chiasm, ...)
    src = tmp_path / "SegRap2023"
    for i, case in enumerate(("segrap_0000", "segrap_0001")):
        d = src / "SegRap2023_Training_Set_120cases" / "SegRap2023_Training_Set_120cases" / case
        d.mkdir(parents=True)
        sitk.WriteImage(image(ct_array(i)), str(d / "image.nii.gz"))
        # the contrast CT on its own (finer) grid: must be resampled onto the CT
        sitk.WriteImage(image(np.zeros((20, 48, 40), np.int16) + 100, spacing=(0.75, 0.75, 1.5)), str(d / "image_contrast.nii.gz"))
        for name, m in {"BrainStem": box((2, 6), (2, 8), (2, 8)), "Parotid_L": box((3, 7), (10, 20), (10, 18)),
                        "Chiasm": np.zeros(SHAPE, np.uint8), "GTVp": box((4, 8), (12, 18), (12, 16)),
                        "GTVnd": box((1, 3), (18, 22), (2, 6))}.items():
            sitk.WriteImage(image(m), str(d / f"{name}.nii.gz"))
    # the later Update_Labels download replaces a case's masks of the same names
    upd = src / "SegRap2023_Training_Set_120cases_Update_Labels" / "segrap_0001"
    upd.mkdir(parents=True)
    sitk.WriteImage(image(box((3, 7), (10, 20), (10, 12))), str(upd / "Parotid_L.nii.gz"))
    out = convert_dataset("segrap2023", str(src), 601, "SegRap", str(tmp_path / "raw"))
    dj = labels_of(out)
    assert list(dj["labels"]) == ["background", "GTVnd", "GTVp", "BrainStem", "Chiasm", "Parotid_L"]
    assert dj["channel_names"] == {"0": "CT", "1": "CT"} and dj["numTraining"] == 2
    label = read(os.path.join(out, "labelsTr", "segrap_0000.nii.gz"))
    assert (label[5, 14, 14] == dj["labels"]["GTVp"]), "GTVp wins its overlap with Parotid_L"
    assert (label == dj["labels"]["Parotid_L"]).sum() == box((3, 7), (10, 20), (10, 18)).sum() - (
        box((3, 7), (10, 20), (10, 18)) & box((4, 8), (12, 18), (12, 16))).sum()
    assert (read(os.path.join(out, "labelsTr", "segrap_0001.nii.gz")) == dj["labels"]["Parotid_L"]).sum() == 4 * 10 * 2
    contrast = sitk.ReadImage(os.path.join(out, "imagesTr", "segrap_0000_0001.nii.gz"))
    assert contrast.GetSize() == (20, 24, 10) and np.allclose(sitk.GetArrayFromImage(contrast)[2:-2, 2:-2, 2:-2], 100)


def test_segrap2023_one_hot_labels(tmp_path):
    # ..._OneHot_Labels: ONE label map per case and task, Task001 with 54 disjoint regions (6 = the overlap of
    # TemporalLobe_L and Hippocampus_L; 2 = BrainStem, also part of Brain), Task002 with GTVp = 1, GTVnd = 2
    src = tmp_path / "SegRap2023"
    d = src / "SegRap2023_Training_Set_120cases" / "segrap_0000"
    d.mkdir(parents=True)
    sitk.WriteImage(image(ct_array()), str(d / "image.nii.gz"))
    sitk.WriteImage(image(ct_array(1)), str(d / "image_contrast.nii.gz"))
    labels = src / "SegRap2023_Training_Set_120cases_OneHot_Labels"
    (labels / "Task001").mkdir(parents=True)
    (labels / "Task002").mkdir(parents=True)
    sitk.WriteImage(image((2 * box((1, 3), (2, 6), (2, 6)) + 6 * box((5, 7), (10, 14), (10, 14))).astype(np.uint8)),
                    str(labels / "Task001" / "segrap_0000.nii.gz"))
    sitk.WriteImage(image((box((2, 4), (16, 20), (14, 18)) + 2 * box((6, 8), (2, 6), (14, 18))).astype(np.uint8)),
                    str(labels / "Task002" / "segrap_0000.nii.gz"))
    out = convert_dataset("segrap2023", str(src), 611, "SegRapOneHot", str(tmp_path / "raw"), ConvertOptions(overlap="regions"))
    dj = labels_of(out)
    # (--overlap regions lists the structures present in some case: the other 41 decoded masks are empty here)
    assert set(dj["labels"]) - {"background"} == {"GTVp", "GTVnd", "Brain", "BrainStem", "TemporalLobe_L", "Hippocampus_L"}
    label = read(os.path.join(out, "labelsTr", "segrap_0000.nii.gz"))
    regions = {n: v if isinstance(v, list) else [v] for n, v in dj["labels"].items()}
    def covers(name, z, y, x):
        return label[z, y, x] in regions[name]
    assert covers("BrainStem", 2, 3, 3) and covers("Brain", 2, 3, 3) and not covers("TemporalLobe_L", 2, 3, 3)
    assert covers("TemporalLobe_L", 6, 12, 12) and covers("Hippocampus_L", 6, 12, 12) and covers("Brain", 6, 12, 12)
    assert covers("GTVp", 3, 18, 16) and covers("GTVnd", 7, 4, 16) and label[0, 0, 0] == 0


def test_hanseg_layout_resamples_mr_onto_ct(tmp_path):
    # HaN-Seg.zip (Zenodo 7442914): HaN-Seg/set_1/case_XX/, OAR masks as 3D Slicer .seg.nrrd files
    src = tmp_path / "HaN-Seg" / "set_1"
    src.mkdir(parents=True)
    (src / "OAR_data.csv").write_text("ID,Brainstem\n")
    for i, case in enumerate(("case_01", "case_02")):
        d = src / case
        d.mkdir(parents=True)
        sitk.WriteImage(image(ct_array(i)), str(d / f"{case}_IMG_CT.nrrd"))
        ramp = np.broadcast_to(np.arange(40, dtype=np.float32) * 10, (8, 30, 40)).copy()   # grows along x
        sitk.WriteImage(image(ramp, spacing=(1.0, 1.2, 4.0), origin=(-5.0, -4.0, -2.0)), str(d / f"{case}_IMG_MR_T1.nrrd"))
        sitk.WriteImage(image(box((2, 6), (2, 10), (2, 10))), str(d / f"{case}_OAR_Brainstem.seg.nrrd"))
        ending = ".seg.nrrd" if i == 0 else ".nrrd"       # plain .nrrd accepted too
        sitk.WriteImage(image(box((3, 7), (12, 20), (8, 16))), str(d / f"{case}_OAR_Parotid_L{ending}"))
    out = convert_dataset("hanseg", str(tmp_path / "HaN-Seg"), 602, "HaNSeg", str(tmp_path / "raw"))
    dj = labels_of(out)
    assert dj["labels"] == {"background": 0, "Brainstem": 1, "Parotid_L": 2}
    assert dj["channel_names"] == {"0": "CT", "1": "T1"}
    mr = sitk.ReadImage(os.path.join(out, "imagesTr", "case_01_0001.nii.gz"))
    assert mr.GetSize() == (20, 24, 10) and mr.GetSpacing() == (1.5, 1.5, 3.0)
    # CT voxel x index 4 lies at x = 6 mm, which is MR index 11 -> value 110 (linear interpolation of a ramp)
    assert abs(sitk.GetArrayFromImage(mr)[5, 10, 4] - 110.0) < 1e-3


def make_hecktor(root, label_value=2):
    # hecktor2022_training as extracted (an extra hecktor2022/ level): imagesTr/<Center-ID>__CT|__PT.nii.gz and
    # labelsTr/<Center-ID>.nii.gz; the challenge page spells the label file CHUM_001.nii.gz, accepted too
    d = root / "hecktor2022_training" / "hecktor2022"
    (d / "imagesTr").mkdir(parents=True)
    (d / "labelsTr").mkdir(parents=True)
    for i, case in enumerate(("CHUM-001", "CHUP-002")):
        sitk.WriteImage(image(ct_array(i)), str(d / "imagesTr" / f"{case}__CT.nii.gz"))
        sitk.WriteImage(image(np.full((5, 12, 10), 2.5, np.float32), spacing=(3.0, 3.0, 6.0)), str(d / "imagesTr" / f"{case}__PT.nii.gz"))
        label_name = case if i == 0 else case.replace("-", "_")
        sitk.WriteImage(image(box((3, 6), (5, 10), (5, 10)) + label_value * box((6, 8), (14, 18), (12, 16))),
                        str(d / "labelsTr" / f"{label_name}.nii.gz"))
    ts = root / "hecktor2022_testing" / "imagesTs"       # unlabelled: skipped
    ts.mkdir(parents=True)
    sitk.WriteImage(image(ct_array(5)), str(ts / "USZ-001__CT.nii.gz"))
    return root


def test_hecktor_layout_and_bad_label_values(tmp_path):
    out = convert_dataset("hecktor", str(make_hecktor(tmp_path / "ok")), 603, "Hecktor", str(tmp_path / "raw"))
    dj = labels_of(out)
    assert dj["labels"] == {"background": 0, "GTVp": 1, "GTVn": 2} and dj["numTraining"] == 2
    assert dj["channel_names"] == {"0": "CT", "1": "CT"} and dj["channel_modalities"] == ["CT", "PET"]
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme
    assert get_normalization_scheme(dj["channel_names"]["1"]) is CTNormalization     # PET in SUV: see channels.py
    pet = sitk.ReadImage(os.path.join(out, "imagesTr", "CHUM-001_0001.nii.gz"))
    assert pet.GetSize() == (20, 24, 10) and np.allclose(sitk.GetArrayFromImage(pet)[1:-2, 1:-2, 1:-2], 2.5)
    assert set(np.unique(read(os.path.join(out, "labelsTr", "CHUP-002.nii.gz")))) == {0, 1, 2}
    with pytest.raises(ConversionError, match=r"patient 'CHUM-001', file '.*CHUM-001.nii.gz'.*values \[3\].*consecutive"):
        convert_dataset("hecktor", str(make_hecktor(tmp_path / "bad", label_value=3)), 604, "Bad", str(tmp_path / "raw"))
    assert not [p for p in os.listdir(tmp_path / "raw") if "604" in p or p.startswith(".tmp")]


def test_hecktor_2025_patient_folders(tmp_path):
    # HECKTOR 2025 Task 1: one folder per patient, the label file beside the images
    src = tmp_path / "hecktor2025_training" / "Task 1"
    for i, case in enumerate(("CHUM-001", "MDA-002")):
        (src / case).mkdir(parents=True)
        sitk.WriteImage(image(ct_array(i)), str(src / case / f"{case}__CT.nii.gz"))
        sitk.WriteImage(image(np.full(SHAPE, 4.0, np.float32)), str(src / case / f"{case}__PT.nii.gz"))
        sitk.WriteImage(image(box((3, 6), (5, 10), (5, 10)) + 2 * box((6, 8), (14, 18), (12, 16))), str(src / case / f"{case}.nii.gz"))
    (src / "HECKTOR_2025_Training_Task_1.csv").write_text("PatientID\nCHUM-001\nMDA-002\n")
    out = convert_dataset("hecktor", str(src), 612, "Hecktor25", str(tmp_path / "raw"))
    assert labels_of(out)["numTraining"] == 2
    assert set(np.unique(read(os.path.join(out, "labelsTr", "MDA-002.nii.gz")))) == {0, 1, 2}


def test_totalseg_layout_merges_masks(tmp_path):
    src = tmp_path / "Totalsegmentator_dataset_v201"
    for i, case in enumerate(("s0000", "s0001")):
        (src / case / "segmentations").mkdir(parents=True)
        sitk.WriteImage(image(ct_array(i)), str(src / case / "ct.nii.gz"))
        for name, m in (("liver", box((1, 5), (2, 12), (2, 10))), ("spleen", box((1, 5), (14, 20), (12, 18))),
                        ("brain", np.zeros(SHAPE, np.uint8))):      # outside the field of view: an empty mask
            sitk.WriteImage(image(m), str(src / case / "segmentations" / f"{name}.nii.gz"))
    (src / "meta.csv").write_text("image_id;age;gender;split\ns0000;50;m;train\ns0001;60;f;test\n")   # ';'-separated
    out = convert_dataset("totalseg", str(src), 605, "TotalSeg", str(tmp_path / "raw"), num_processes=2)
    assert labels_of(out)["labels"] == {"background": 0, "brain": 1, "liver": 2, "spleen": 3}
    label = read(os.path.join(out, "labelsTr", "s0001.nii.gz"))
    assert (label == 2).sum() == 4 * 10 * 8 and (label == 3).sum() == 4 * 6 * 6 and (label == 1).sum() == 0


def test_msd_layout_splits_4d_images(tmp_path):
    src = tmp_path / "Task01_BrainTumour"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir(parents=True)
    (src / "imagesTs").mkdir(parents=True)
    json.dump({"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema", "2": "tumour"},
               "numTraining": 2, "training": [], "test": []}, open(src / "dataset.json", "w"))
    for i in range(2):
        data = np.stack([np.full(SHAPE[::-1], 10.0 * (c + 1), np.float32) for c in range(2)], axis=-1)  # x, y, z, c
        nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0])), str(src / "imagesTr" / f"BRATS_{i:03d}.nii.gz"))
        nib.save(nib.Nifti1Image(np.transpose(box((1, 4), (2, 8), (2, 8)) + box((5, 8), (10, 14), (10, 14)) * 2, (2, 1, 0)),
                                 np.diag([1.5, 1.5, 3.0, 1.0])), str(src / "labelsTr" / f"BRATS_{i:03d}.nii.gz"))
    open(src / "imagesTr" / "._BRATS_000.nii.gz", "w").write("macOS resource fork")
    open(src / "labelsTr" / "._BRATS_000.nii.gz", "w").write("macOS resource fork")
    out = convert_dataset("msd", str(src), 606, "BrainTumour", str(tmp_path / "raw"))
    dj = labels_of(out)
    assert dj["labels"] == {"background": 0, "edema": 1, "tumour": 2} and dj["channel_names"] == {"0": "FLAIR", "1": "T1w"}
    assert np.allclose(read(os.path.join(out, "imagesTr", "BRATS_001_0001.nii.gz")), 20.0)


def make_folder(root, modalities=("CT",), nested=False):
    for i, case in enumerate(("pat1", "pat2")):
        (root / case / "masks").mkdir(parents=True)
        for m in modalities:
            value = {"CT": ct_array(i), "PET": np.full(SHAPE, 3.0, np.float32),
                     "MR_T1": np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE),
                     "MR_T2": np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)}[m]
            sitk.WriteImage(image(value), str(root / case / f"{m}.nii.gz"))
        sitk.WriteImage(image(box((2, 8), (4, 20), (4, 16))), str(root / case / "masks" / "ctv high.nii.gz"))
        gtv = box((3, 6), (8, 14), (6, 12)) if nested else box((3, 6), (8, 14), (14, 19))
        sitk.WriteImage(image(gtv), str(root / case / "masks" / "GTV primary.nii.gz"))
    return root


def test_folder_with_map_regions_clinical_and_rgb_fusion(tmp_path):
    raw = str(tmp_path / "raw")
    smap = tmp_path / "map.yaml"
    smap.write_text("labels:\n  CTV: ['re:^ctv.*']\n  GTV: ['GTV primary', GTVp]\npriority: [GTV, CTV]\n")
    src = make_folder(tmp_path / "nested", nested=True)
    out = convert_dataset("folder", str(src), 607, "Regions", raw, ConvertOptions(structure_map=str(smap), overlap="regions"))
    dj = labels_of(out)
    # nested GTV inside CTV: value 1 = CTV only, 2 = CTV and GTV; regions CTV = [1, 2], GTV = [2]
    assert dj["labels"] == {"background": 0, "CTV": [1, 2], "GTV": [2]} and dj["regions_class_order"] == [1, 2]
    label = read(os.path.join(out, "labelsTr", "pat1.nii.gz"))
    assert (label == 2).sum() == box((3, 6), (8, 14), (6, 12)).sum()
    table = tmp_path / "clinical.csv"
    table.write_text("id,laterality,T,N,M\npat1,left,T1,N0,M0\npat2,right,T4,N2,M1\n")
    src = make_folder(tmp_path / "multi", modalities=("CT", "PET", "MR_T1", "MR_T2"))
    out = convert_dataset("folder", str(src), 608, "Fused", raw, ConvertOptions(structure_map=str(smap), rgb_fusion=True,
                                                                                modalities=("CT", "PET", "MR_T1", "MR_T2")),
                          clinical=str(table))
    dj = labels_of(out)
    assert dj["channel_names"] == {"0": "rgb_to_0_1", "1": "rgb_to_0_1", "2": "rgb_to_0_1"}
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "pat1" / "CT.nii.gz"))).astype(np.float32)
    red, green, blue = (read(os.path.join(out, "imagesTr", f"pat1_{c:04d}.nii.gz")) for c in range(3))
    assert np.allclose(red, np.clip((ct + 160) / 400, 0, 1) * 255, atol=1e-3)       # WL 40 / WW 400
    assert np.allclose(green, 3.0 / 6.0 * 255)                                      # PET 0-6 SUV
    assert blue.min() == 0 and blue.max() == 255 and blue.mean() > 100              # MR 0-99.5 percentile
    assert read_sidecar(out)["pat2"]["text"] == "Right-sided tumour, cT4N2M1."


def test_folder_bad_inputs(tmp_path):
    raw = str(tmp_path / "raw")
    src = make_folder(tmp_path / "src")
    bad_map = tmp_path / "values.yaml"
    bad_map.write_text("labels:\n  CTV: {value: 1, aliases: ['re:^ctv.*']}\n  GTV: {value: 3, aliases: ['GTV primary']}\n")
    with pytest.raises(ConversionError, match=r"values.yaml'.*would not be consecutive"):
        convert_dataset("folder", str(src), 609, "Bad", raw, ConvertOptions(structure_map=str(bad_map)))
    # a sheared NIfTI (non-orthonormal direction), written with nibabel
    affine = np.array([[1.5, 0.4, 0, 0], [0, 1.5, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.zeros(SHAPE[::-1], np.int16), affine), str(src / "pat2" / "CT.nii.gz"))
    with pytest.raises(ConversionError, match=r"patient 'pat2', file '.*pat2/CT.nii.gz'.*not orthonormal"):
        convert_dataset("folder", str(src), 609, "Bad", raw)
    assert not os.path.exists(raw) or not os.listdir(raw)

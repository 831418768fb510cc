"""The expected input layout of each `convert` format (text only: the CLI help shows it without importing
the converters)."""

LAYOUTS = {
    "dicom-rt": """SOURCE/<patient>/**  one folder per patient (any sub-folders) with DICOM files: the CT series, one RTSTRUCT
that references it, and optionally PET and/or MR series of the same frame of reference (resampled onto the
CT; PET converted to SUV). Case id = PatientID. Structure names are mapped with --structure-map (default: the
shipped radiotherapy map).""",
    "segrap2023": """SOURCE/**/segrap_XXXX/{image.nii.gz, image_contrast.nii.gz, <Structure>.nii.gz ...}, as in the
download SegRap2023_Training_Set_120cases: one binary mask per structure beside the two images (45 OARs such as
BrainStem, Chiasm, Parotid_L, and GTVp, GTVnd). If SegRap2023_Training_Set_120cases_Update_Labels/segrap_XXXX/ is
under SOURCE its masks replace those of the same names. A case folder without masks is labelled from
SegRap2023_Training_Set_120cases_OneHot_Labels/Task001/segrap_XXXX.nii.gz (one map of 54 disjoint regions, decoded
with the organisers' region table) and Task002/segrap_XXXX.nii.gz (1 = GTVp, 2 = GTVnd). Channels: CT, contrast CT
(resampled onto the CT). Labels: the dataset's own structure names (GTVs first) unless --structure-map is given; an
empty mask means absent.""",
    "hanseg": """SOURCE/**/case_XX/{case_XX_IMG_CT.nrrd, case_XX_IMG_MR_T1.nrrd, case_XX_OAR_<OAR>.seg.nrrd ...}
(HaN-Seg's published layout, HaN-Seg/set_1/case_01/; plain .nrrd masks are accepted too; OAR_data.csv and
patient_data.csv are ignored). Channels: CT, T1 MR resampled onto the CT in physical space. HaN-Seg's MR is NOT
registered to the CT (its origin can be far off): register it first if the MR channel must line up. Labels: the OAR
names (A_Carotid_L, Brainstem, ...) unless --structure-map is given; only present OARs have a file.""",
    "hecktor": """HECKTOR 2022: SOURCE/**/imagesTr/<Center-ID>__CT.nii.gz, <Center-ID>__PT.nii.gz and
SOURCE/**/labelsTr/<Center-ID>.nii.gz (or <Center_ID>.nii.gz); imagesTs is skipped. HECKTOR 2025 Task 1 / 2026:
SOURCE/<Center-ID>/{<Center-ID>__CT.nii.gz, <Center-ID>__PT.nii.gz, <Center-ID>.nii.gz} (point SOURCE at the 'Task 1'
folder). Label 1 = GTVp, 2 = GTVn; PET taken as SUV. Channels: CT, PET resampled onto the CT (linear); the label map
is resampled onto the CT with nearest neighbour.""",
    "totalseg": """SOURCE/sXXXX/ct.nii.gz and SOURCE/sXXXX/segmentations/<structure>.nii.gz (TotalSegmentator v1/v2;
meta.csv, with its train/val/test split, is ignored: every case goes to imagesTr). Labels: the structure file names
unless --structure-map is given (e.g. to keep a few organs); an empty mask means the structure is outside the scan
(absent).""",
    "msd": """SOURCE = TaskXX_Name/ with dataset.json (MSD style: "modality", "labels"), imagesTr/<case>.nii.gz (3D or 4D)
and labelsTr/<case>.nii.gz. Channels: MSD's modality names (CT gets CT normalization, others z-score).
Labels: MSD's label names and values (must be consecutive). imagesTs (no labels) is not converted.""",
    "folder": """SOURCE/<case>/<MODALITY>.nii.gz|.nii|.nrrd|.mha for each of --modalities (default: CT; the first is the
reference grid, the others are resampled onto it; known: CT, CT_contrast, PET (in SUV), MR_T1, MR_T2, MR) and
SOURCE/<case>/masks/<structure>.<ending>, one binary mask per structure, mapped to labels with --structure-map
(default: the shipped radiotherapy map). Empty mapped masks are errors.""",
}

"""The expected input layout of each `convert` format (text only: the CLI help shows it without importing
the converters)."""

LAYOUTS = {
    "dicom-rt": """SOURCE/<patient>/**  one folder per patient (any sub-folders) with DICOM files: the CT series, one RTSTRUCT
that references it, and optionally PET and/or MR series of the same frame of reference (resampled onto the
CT; PET converted to SUV). Case id = PatientID. Structure names are mapped with --structure-map (default: the
shipped radiotherapy map).""",
    "segrap2023": """SOURCE/SegRap2023_Training_Set_120cases/segrap_XXXX/{image.nii.gz, image_contrast.nii.gz} and
SOURCE/SegRap2023_Training_Set_120cases_OneHot_Labels/Task001|Task002/segrap_XXXX/<Structure>.nii.gz (one mask
per OAR in Task001, GTVp/GTVnd in Task002). Channels: CT, contrast CT (resampled onto the CT). Labels: the
dataset's own structure names (GTVs first) unless --structure-map is given; an empty mask means absent.""",
    "hanseg": """SOURCE/**/case_XX/{case_XX_IMG_CT.nrrd, case_XX_IMG_MR_T1.nrrd, case_XX_OAR_<Structure>.nrrd ...}
(HaN-Seg's published layout, e.g. HaN-Seg/set_1/case_01/). Channels: CT, T1 MR resampled onto the CT in physical
space. HaN-Seg's MR is NOT registered to the CT: register it first if the MR channel must line up. Labels: the
OAR names (A_Carotid_L, Brainstem, ...) unless --structure-map is given; only present OARs have a file.""",
    "hecktor": """SOURCE/**/imagesTr/<Center-ID>__CT.nii.gz, <Center-ID>__PT.nii.gz and SOURCE/**/labelsTr/<Center-ID>.nii.gz
(HECKTOR 2022: label 1 = GTVp, 2 = GTVn; PET already in SUV). Channels: CT, PET resampled onto the CT (linear);
the label map is resampled onto the CT with nearest neighbour.""",
    "totalseg": """SOURCE/sXXXX/ct.nii.gz and SOURCE/sXXXX/segmentations/<structure>.nii.gz (TotalSegmentator v1/v2; meta.csv
is ignored). Labels: the structure file names unless --structure-map is given (e.g. to keep a few organs);
an empty mask means the structure is outside the scan (absent).""",
    "msd": """SOURCE = TaskXX_Name/ with dataset.json (MSD style: "modality", "labels"), imagesTr/<case>.nii.gz (3D or 4D)
and labelsTr/<case>.nii.gz. Channels: MSD's modality names (CT gets CT normalization, others z-score).
Labels: MSD's label names and values (must be consecutive). imagesTs (no labels) is not converted.""",
    "folder": """SOURCE/<case>/<MODALITY>.nii.gz|.nii|.nrrd|.mha for each of --modalities (default: CT; the first is the
reference grid, the others are resampled onto it; known: CT, CT_contrast, PET (in SUV), MR_T1, MR_T2, MR) and
SOURCE/<case>/masks/<structure>.<ending>, one binary mask per structure, mapped to labels with --structure-map
(default: the shipped radiotherapy map). Empty mapped masks are errors.""",
}

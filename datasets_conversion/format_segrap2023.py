"""Format `segrap2023`: SegRap2023 (nasopharyngeal carcinoma: 45 OARs + GTVp/GTVnd on CT and contrast CT).

Published layout (see docs/how_to/conversion.md for the sources): each training case folder
`SegRap2023_Training_Set_120cases/segrap_XXXX/` holds `image.nii.gz` (CT), `image_contrast.nii.gz` (contrast CT) and
one binary mask per structure, `<Structure>.nii.gz` (the 45 OARs named as in the challenge's evaluation, e.g.
BrainStem, Chiasm, Parotid_L, and GTVp, GTVnd). The separate download `SegRap2023_Training_Set_120cases_OneHot_Labels`
is NOT one mask per structure: `Task001/segrap_XXXX.nii.gz` is one label map of 54 disjoint regions (overlaps of
nested OARs have values of their own) and `Task002/segrap_XXXX.nii.gz` holds GTVp = 1, GTVnd = 2. It is decoded
with the organisers' own region table only for cases whose folder has no mask files. The later download
`SegRap2023_Training_Set_120cases_Update_Labels` (corrected OAR masks, `segrap_XXXX/<Structure>.nii.gz`) replaces
the case folder's masks of the same names when it is under SOURCE."""
from __future__ import annotations

import glob
import os
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from nnunet_prompt_datasets.format_layouts import LAYOUTS
from nnunet_prompt_datasets.case_model import CaseRef, ConvertOptions, LoadedCase
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.image_io import read_image
from nnunet_prompt_datasets.mask_files import image_files, map_or_identity, read_masks, stem

LAYOUT = LAYOUTS["segrap2023"]
EMPTY_MASKS_MEAN_ABSENT = True
IMAGES = (("CT", "image.nii.gz"), ("CT_contrast", "image_contrast.nii.gz"))

# The OneHot label maps' region values per structure, as in the organisers' converter
# (HiLab-git/SegRap2023, convert_one_hot_prediction_to_multi_organs_lesions.py): values 6, 7, 20, 21, 24, 25, 30,
# 31 and 51 are overlaps of two structures and belong to both.
ONE_HOT_TASK001 = {
    "Brain": [1, 2, 3, 4, 5, 6, 7, 8, 9], "BrainStem": [2], "Chiasm": [3], "TemporalLobe_L": [4, 6],
    "TemporalLobe_R": [5, 7], "Hippocampus_L": [8, 6], "Hippocampus_R": [9, 7], "Eye_L": [10, 12], "Eye_R": [11, 13],
    "Lens_L": [12], "Lens_R": [13], "OpticNerve_L": [14], "OpticNerve_R": [15], "MiddleEar_L": [18, 16, 20, 24, 28, 30],
    "MiddleEar_R": [19, 17, 21, 25, 29, 31], "IAC_L": [18], "IAC_R": [19], "TympanicCavity_L": [22, 20],
    "TympanicCavity_R": [23, 21], "VestibulSemi_L": [26, 24], "VestibulSemi_R": [27, 25], "Cochlea_L": [28],
    "Cochlea_R": [29], "ETbone_L": [32, 30], "ETbone_R": [33, 31], "Pituitary": [34], "OralCavity": [35],
    "Mandible_L": [36], "Mandible_R": [37], "Submandibular_L": [38], "Submandibular_R": [39], "Parotid_L": [40],
    "Parotid_R": [41], "Mastoid_L": [42], "Mastoid_R": [43], "TMjoint_L": [44], "TMjoint_R": [45], "SpinalCord": [46],
    "Esophagus": [47], "Larynx": [48, 49, 50, 51], "Larynx_Glottic": [49], "Larynx_Supraglot": [50],
    "PharynxConst": [51, 52], "Thyroid": [53], "Trachea": [54]}
ONE_HOT_TASK002 = {"GTVp": [1], "GTVnd": [2]}


def _masks_in(folder: str) -> Dict[str, str]:
    image_names = {fn for _, fn in IMAGES}
    return {stem(p): p for p in image_files(folder) if os.path.basename(p) not in image_names}


def _one_hot_files(source: str, case: str) -> Dict[str, str]:
    """Task001/Task002 label maps of a case in a *OneHot_Labels* folder (folder names Task001*, Task002*)."""
    found = {}
    for task in ("Task001", "Task002"):
        hits = sorted(glob.glob(os.path.join(source, "**", "*OneHot*", f"{task}*", f"{case}.nii.gz"), recursive=True))
        if hits:
            found[task] = hits[0]
    return found


def find_cases(source: str, options: ConvertOptions) -> List[CaseRef]:
    folders = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(source, "**", "segrap_*", "image.nii.gz"),
                                                           recursive=True)})
    if not folders:
        raise ConversionError("no case folder segrap_XXXX/ with image.nii.gz found.", file=source, fix=LAYOUT)
    updates = {}
    for p in glob.glob(os.path.join(source, "**", "*Update_Labels*", "segrap_*"), recursive=True):
        if os.path.isdir(p):
            updates[os.path.basename(p)] = p
    cases, seen = [], {}
    for folder in folders:
        case = os.path.basename(folder)
        if case in seen:
            raise ConversionError(f"case '{case}' is in two folders ({seen[case]} and {folder}).", case, folder,
                                  "keep one copy of each case under SOURCE.")
        seen[case] = folder
        masks = _masks_in(folder)
        if case in updates:
            masks.update(_masks_in(updates[case]))
        one_hot = {} if masks else _one_hot_files(source, case)
        if not masks and not one_hot:
            raise ConversionError("no label masks found for this case.", case, folder,
                                  "put the case's <Structure>.nii.gz masks in its folder, or the "
                                  "SegRap2023_Training_Set_120cases_OneHot_Labels folder under SOURCE.")
        cases.append(CaseRef(case, folder, {"masks": masks, "one_hot": one_hot}))
    # the identity map is built from c.files["masks"]: name what the OneHot label maps will be decoded into
    for c in cases:
        if c.files["one_hot"]:
            c.files["masks"] = {name: c.files["one_hot"][task] for task, table in
                                (("Task001", ONE_HOT_TASK001), ("Task002", ONE_HOT_TASK002))
                                if task in c.files["one_hot"] for name in table}
    return cases


def structure_map(cases, options):
    return map_or_identity(cases, options, "SegRap2023 structure names")


def _decode_one_hot(files: Dict[str, str], case: str) -> Dict[str, tuple]:
    structures = {}
    for task, table in (("Task001", ONE_HOT_TASK001), ("Task002", ONE_HOT_TASK002)):
        if task not in files:
            continue
        label = read_image(files[task], case)
        values = sitk.GetArrayFromImage(label)
        unknown = sorted(set(np.unique(values).tolist()) - {0} - {v for vs in table.values() for v in vs})
        if unknown:
            raise ConversionError(f"{task} label map has values {unknown} outside the SegRap2023 region table.", case,
                                  files[task], "use the published OneHot label files, or the per-structure masks.")
        for name, region_values in table.items():
            mask = sitk.GetImageFromArray(np.isin(values, region_values).astype(np.uint8))
            mask.CopyInformation(label)
            structures[name] = (mask, files[task])
    return structures


def load_case(case: CaseRef, options: ConvertOptions) -> LoadedCase:
    images = []
    for modality, fn in IMAGES:
        path = os.path.join(case.source, fn)
        if not os.path.isfile(path):
            raise ConversionError(f"missing {fn}.", case.case_id, path, "every SegRap case needs image.nii.gz and image_contrast.nii.gz.")
        images.append((modality, read_image(path, case.case_id), path))
    if case.files["one_hot"]:
        return LoadedCase(images=images, structures=_decode_one_hot(case.files["one_hot"], case.case_id),
                          notes=["labels decoded from the OneHot label maps"])
    return LoadedCase(images=images, structures=read_masks(case.files["masks"], case.case_id))

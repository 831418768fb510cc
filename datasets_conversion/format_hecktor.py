"""Format `hecktor`: HECKTOR 2022 (head-and-neck GTVp/GTVn on CT and FDG-PET), and the per-patient folders of
HECKTOR 2025 (Task 1) / 2026.

Published layouts (hecktor.grand-challenge.org/Data, hecktor25.grand-challenge.org/dataset): 2022
`hecktor2022_training/imagesTr/<Center-ID>__CT.nii.gz`, `__PT.nii.gz` and `labelsTr/<Center-ID>.nii.gz` (the
challenge page writes the label file `CHUM_001.nii.gz`; public code reads `CHUM-001.nii.gz`: both are accepted);
2025/2026 `<Center-ID>/<Center-ID>__CT.nii.gz`, `__PT.nii.gz`, `<Center-ID>.nii.gz`. Labels: 1 = GTVp, 2 = GTVn."""
from __future__ import annotations

import glob
import os
from typing import List

from nnunet_prompt_datasets.format_layouts import LAYOUTS
from nnunet_prompt_datasets.case_model import CaseRef, ConvertOptions, LoadedCase
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.image_io import read_image
from nnunet_prompt_datasets.structure_map import StructureMap

LAYOUT = LAYOUTS["hecktor"]
PER_STRUCTURE_MASKS = False
LABELS = {"GTVp": 1, "GTVn": 2}


def find_cases(source: str, options: ConvertOptions) -> List[CaseRef]:
    cases, seen = [], {}
    for ct in sorted(glob.glob(os.path.join(source, "**", "*__CT.nii.gz"), recursive=True)):
        case, folder = os.path.basename(ct)[: -len("__CT.nii.gz")], os.path.dirname(ct)
        if os.path.basename(folder) == "imagesTs":      # the unlabelled 2022 test set
            continue
        if case in seen:
            raise ConversionError(f"case '{case}' appears twice ({seen[case]} and {ct}).", case, ct,
                                  "point SOURCE at one training set (for HECKTOR 2025: the 'Task 1' folder).")
        seen[case] = ct
        if os.path.basename(folder) == "imagesTr":      # 2022: labels in the sibling labelsTr folder
            labels = os.path.join(os.path.dirname(folder), "labelsTr")
        else:                                            # 2025/2026: the label file beside the images
            labels = folder
        candidates = [os.path.join(labels, f"{name}.nii.gz") for name in dict.fromkeys((case, case.replace("-", "_")))]
        label = next((p for p in candidates if os.path.isfile(p)), candidates[0])
        cases.append(CaseRef(case, ct, {"ct": ct, "pet": os.path.join(folder, f"{case}__PT.nii.gz"), "label": label}))
    if not cases:
        raise ConversionError("no <Center-ID>__CT.nii.gz image found.", file=source, fix=LAYOUT)
    return cases


def structure_map(cases, options):
    return StructureMap(dict(LABELS), {n: [] for n in LABELS}, list(LABELS), "HECKTOR labels (1 GTVp, 2 GTVn)")


def load_case(case: CaseRef, options: ConvertOptions) -> LoadedCase:
    for key in ("pet", "label"):
        if not os.path.isfile(case.files[key]):
            raise ConversionError(f"missing {key} file.", case.case_id, case.files[key],
                                  "every HECKTOR case needs __CT, __PT and a label file (in labelsTr, or beside the images).")
    return LoadedCase(images=[("CT", read_image(case.files["ct"], case.case_id), case.files["ct"]),
                              ("PET", read_image(case.files["pet"], case.case_id), case.files["pet"])],
                      label=read_image(case.files["label"], case.case_id), label_file=case.files["label"])

"""Format `hecktor`: HECKTOR 2022 (head-and-neck GTVp/GTVn on CT and FDG-PET)."""
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
    cases = []
    for ct in sorted(glob.glob(os.path.join(source, "**", "imagesTr", "*__CT.nii.gz"), recursive=True)):
        case = os.path.basename(ct)[: -len("__CT.nii.gz")]
        root = os.path.dirname(os.path.dirname(ct))
        cases.append(CaseRef(case, ct, {"ct": ct, "pet": os.path.join(os.path.dirname(ct), f"{case}__PT.nii.gz"),
                                        "label": os.path.join(root, "labelsTr", f"{case}.nii.gz")}))
    return cases


def structure_map(cases, options):
    return StructureMap(dict(LABELS), {n: [] for n in LABELS}, list(LABELS), "HECKTOR labels (1 GTVp, 2 GTVn)")


def load_case(case: CaseRef, options: ConvertOptions) -> LoadedCase:
    for key in ("pet", "label"):
        if not os.path.isfile(case.files[key]):
            raise ConversionError(f"missing {key} file.", case.case_id, case.files[key],
                                  "every HECKTOR case needs __CT, __PT and a label file in labelsTr.")
    return LoadedCase(images=[("CT", read_image(case.files["ct"], case.case_id), case.files["ct"]),
                              ("PET", read_image(case.files["pet"], case.case_id), case.files["pet"])],
                      label=read_image(case.files["label"], case.case_id), label_file=case.files["label"])

"""Format `totalseg`: TotalSegmentator (CT, one mask file per structure, merged into one label map)."""
from __future__ import annotations

import os
from typing import List

from nnunet_prompt_datasets.format_layouts import LAYOUTS
from nnunet_prompt_datasets.case_model import CaseRef, ConvertOptions, LoadedCase
from nnunet_prompt_datasets.image_io import read_image
from nnunet_prompt_datasets.mask_files import image_files, map_or_identity, read_masks, stem

LAYOUT = LAYOUTS["totalseg"]
EMPTY_MASKS_MEAN_ABSENT = True


def find_cases(source: str, options: ConvertOptions) -> List[CaseRef]:
    cases = []
    for case in sorted(os.listdir(source)):
        ct = os.path.join(source, case, "ct.nii.gz")
        if os.path.isfile(ct):
            masks = {stem(p): p for p in image_files(os.path.join(source, case, "segmentations"))}
            cases.append(CaseRef(case, os.path.join(source, case), {"masks": masks, "ct": ct}))
    return cases


def structure_map(cases, options):
    return map_or_identity(cases, options, "TotalSegmentator structure names")


def load_case(case: CaseRef, options: ConvertOptions) -> LoadedCase:
    return LoadedCase(images=[("CT", read_image(case.files["ct"], case.case_id), case.files["ct"])],
                      structures=read_masks(case.files["masks"], case.case_id))

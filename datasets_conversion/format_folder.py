"""Format `folder`: generic images plus one mask file per structure, mapped with a structure map."""
from __future__ import annotations

import os
from typing import List

from nnunet_prompt_datasets.format_layouts import LAYOUTS
from nnunet_prompt_datasets.case_model import CaseRef, ConvertOptions, LoadedCase
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.image_io import read_image
from nnunet_prompt_datasets.mask_files import IMAGE_ENDINGS, image_files, read_masks, stem
from nnunet_prompt_datasets.structure_map import StructureMap

LAYOUT = LAYOUTS["folder"]
EMPTY_MASKS_MEAN_ABSENT = False


def find_cases(source: str, options: ConvertOptions) -> List[CaseRef]:
    cases = []
    for case in sorted(os.listdir(source)):
        folder = os.path.join(source, case)
        if os.path.isdir(folder) and not case.startswith("."):
            masks = {stem(p): p for p in image_files(os.path.join(folder, "masks"))}
            cases.append(CaseRef(case, folder, {"masks": masks}))
    return cases


def structure_map(cases, options) -> StructureMap:
    return StructureMap.load(options.structure_map)


def _find(folder: str, modality: str, case: str) -> str:
    for ending in IMAGE_ENDINGS:
        if os.path.isfile(os.path.join(folder, modality + ending)):
            return os.path.join(folder, modality + ending)
    raise ConversionError(f"no {modality} image.", case, os.path.join(folder, modality + ".nii.gz"),
                          f"add it, or change --modalities (now {modality!r} is expected).")


def load_case(case: CaseRef, options: ConvertOptions) -> LoadedCase:
    images = []
    for modality in options.modalities or ("CT",):
        path = _find(case.source, modality, case.case_id)
        images.append((modality, read_image(path, case.case_id), path))
    return LoadedCase(images=images, structures=read_masks(case.files["masks"], case.case_id))

"""Format `segrap2023`: SegRap2023 (nasopharyngeal carcinoma: 45 OARs + GTVp/GTVnd on CT and contrast CT)."""
from __future__ import annotations

import os
from typing import List

from nnunet_prompt_datasets.format_layouts import LAYOUTS
from nnunet_prompt_datasets.case_model import CaseRef, ConvertOptions, LoadedCase
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.image_io import read_image
from nnunet_prompt_datasets.mask_files import image_files, map_or_identity, read_masks, stem

LAYOUT = LAYOUTS["segrap2023"]
EMPTY_MASKS_MEAN_ABSENT = True


def find_cases(source: str, options: ConvertOptions) -> List[CaseRef]:
    images_root = os.path.join(source, "SegRap2023_Training_Set_120cases")
    labels_root = os.path.join(source, "SegRap2023_Training_Set_120cases_OneHot_Labels")
    if not os.path.isdir(images_root) or not os.path.isdir(labels_root):
        raise ConversionError("expected the folders 'SegRap2023_Training_Set_120cases' and "
                              "'SegRap2023_Training_Set_120cases_OneHot_Labels'.", file=source, fix=LAYOUT)
    cases = []
    for case in sorted(os.listdir(images_root)):
        folder = os.path.join(images_root, case)
        if not os.path.isdir(folder):
            continue
        masks = {}
        for task in sorted(os.listdir(labels_root)):
            for path in image_files(os.path.join(labels_root, task, case)):
                if stem(path) in masks:
                    raise ConversionError(f"structure '{stem(path)}' appears in two label tasks.", case, path,
                                          "keep one mask file per structure.")
                masks[stem(path)] = path
        if not masks:
            raise ConversionError("no label masks found for this case.", case,
                                  os.path.join(labels_root, "Task001", case), "add the case's OneHot label folders.")
        cases.append(CaseRef(case, folder, {"masks": masks}))
    return cases


def structure_map(cases, options):
    return map_or_identity(cases, options, "SegRap2023 structure names")


def load_case(case: CaseRef, options: ConvertOptions) -> LoadedCase:
    images = []
    for modality, fn in (("CT", "image.nii.gz"), ("CT_contrast", "image_contrast.nii.gz")):
        path = os.path.join(case.source, fn)
        if not os.path.isfile(path):
            raise ConversionError(f"missing {fn}.", case.case_id, path, "every SegRap case needs image.nii.gz and image_contrast.nii.gz.")
        images.append((modality, read_image(path, case.case_id), path))
    return LoadedCase(images=images, structures=read_masks(case.files["masks"], case.case_id))

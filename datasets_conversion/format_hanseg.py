"""Format `hanseg`: HaN-Seg (30 head-and-neck OARs on CT and T1 MR, one nrrd mask per OAR).

Published layout (Zenodo record 7442914, HaN-Seg.zip): HaN-Seg/set_1/case_XX/case_XX_IMG_CT.nrrd,
case_XX_IMG_MR_T1.nrrd and case_XX_OAR_<OAR>.seg.nrrd (3D Slicer segmentation files), with OAR_data.csv and
patient_data.csv beside the case folders (ignored). Plain `.nrrd` masks are accepted too."""
from __future__ import annotations

import glob
import os
from typing import List

from nnunet_prompt_datasets.format_layouts import LAYOUTS
from nnunet_prompt_datasets.case_model import CaseRef, ConvertOptions, LoadedCase
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.image_io import read_image
from nnunet_prompt_datasets.mask_files import map_or_identity, read_masks

LAYOUT = LAYOUTS["hanseg"]
EMPTY_MASKS_MEAN_ABSENT = True


def find_cases(source: str, options: ConvertOptions) -> List[CaseRef]:
    cases = []
    for ct in sorted(glob.glob(os.path.join(source, "**", "*_IMG_CT.nrrd"), recursive=True)):
        folder, case = os.path.dirname(ct), os.path.basename(ct)[: -len("_IMG_CT.nrrd")]
        prefix = os.path.join(folder, f"{case}_OAR_")
        masks = {}
        for p in sorted(glob.glob(glob.escape(prefix) + "*.nrrd")):
            name = p[len(prefix):]
            name = name[: -len(".seg.nrrd")] if name.lower().endswith(".seg.nrrd") else name[: -len(".nrrd")]
            if name in masks:
                raise ConversionError(f"OAR '{name}' has two mask files.", case, p,
                                      "keep one of {0}.seg.nrrd and {0}.nrrd.".format(f"{case}_OAR_{name}"))
            masks[name] = p
        cases.append(CaseRef(case, folder, {"masks": masks, "ct": ct, "mr": os.path.join(folder, f"{case}_IMG_MR_T1.nrrd")}))
    return cases


def structure_map(cases, options):
    return map_or_identity(cases, options, "HaN-Seg OAR names")


def load_case(case: CaseRef, options: ConvertOptions) -> LoadedCase:
    if not os.path.isfile(case.files["mr"]):
        raise ConversionError("missing the T1 MR image.", case.case_id, case.files["mr"],
                              "every HaN-Seg case has CT and MR_T1; restore the file.")
    images = [("CT", read_image(case.files["ct"], case.case_id), case.files["ct"]),
              ("MR_T1", read_image(case.files["mr"], case.case_id), case.files["mr"])]
    return LoadedCase(images=images, structures=read_masks(case.files["masks"], case.case_id),
                      notes=["MR resampled onto the CT in physical space, without registration"])

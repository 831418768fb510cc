"""Format `msd`: a Medical Segmentation Decathlon task folder (TaskXX_Name), 4D images split with nnU-Net's own
MSD converter function (nnunetv2.dataset_conversion.convert_MSD_dataset.split_4d_nifti).

nnU-Net's convert_msd_dataset itself is not called as a whole: it writes straight into the nnUNet_raw it read
at import time, without a temporary folder, which would break the all-or-nothing rule of `convert`."""
from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import List

from nnunet_prompt_datasets.format_layouts import LAYOUTS
from nnunet_prompt_datasets.case_model import CaseRef, ConvertOptions, LoadedCase
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.image_io import read_image
from nnunet_prompt_datasets.structure_map import StructureMap

LAYOUT = LAYOUTS["msd"]
PER_STRUCTURE_MASKS = False


def _dataset_json(source: str) -> dict:
    path = os.path.join(source, "dataset.json")
    if not os.path.isfile(path):
        raise ConversionError("MSD dataset.json missing.", file=path, fix=LAYOUT)
    with open(path) as f:
        return json.load(f)


def find_cases(source: str, options: ConvertOptions) -> List[CaseRef]:
    modalities = [m for _, m in sorted(_dataset_json(source)["modality"].items(), key=lambda kv: int(kv[0]))]
    cases = []
    for image in sorted(glob.glob(os.path.join(source, "imagesTr", "*.nii.gz"))):
        name = os.path.basename(image)
        if name.startswith((".", "_")):
            continue      # macOS resource forks shipped inside the MSD tarballs
        case = name[: -len(".nii.gz")]
        cases.append(CaseRef(case, image, {"label": os.path.join(source, "labelsTr", name), "modalities": modalities}))
    return cases


def structure_map(cases, options) -> StructureMap:
    source = os.path.dirname(os.path.dirname(cases[0].source))
    labels = {int(k): v for k, v in _dataset_json(source)["labels"].items()}
    if sorted(labels) != list(range(len(labels))):
        raise ConversionError(f"MSD label values {sorted(labels)} would not be consecutive.",
                              file=os.path.join(source, "dataset.json"), fix="relabel the task to 0, 1, 2, ...")
    names = {labels[v]: v for v in sorted(labels) if v > 0}
    return StructureMap(names, {n: [] for n in names}, list(names), "MSD dataset.json labels")


def load_case(case: CaseRef, options: ConvertOptions) -> LoadedCase:
    from nnunetv2.dataset_conversion.convert_MSD_dataset import split_4d_nifti
    if not os.path.isfile(case.files["label"]):
        raise ConversionError("label file missing.", case.case_id, case.files["label"], "add labelsTr/<case>.nii.gz.")
    modalities = case.files["modalities"]
    with tempfile.TemporaryDirectory() as scratch:
        split_4d_nifti(case.source, scratch)
        channels = sorted(glob.glob(os.path.join(scratch, f"{case.case_id}_*.nii.gz")))
        if len(channels) != len(modalities):
            raise ConversionError(f"image has {len(channels)} channel(s), dataset.json lists {len(modalities)}.",
                                  case.case_id, case.source, "fix the image or the 'modality' entry of dataset.json.")
        images = [(m, read_image(p, case.case_id), case.source) for m, p in zip(modalities, channels)]
        for _, image, _ in images:
            image.GetSize()      # loaded into memory before the scratch folder goes
    return LoadedCase(images=images, label=read_image(case.files["label"], case.case_id), label_file=case.files["label"])

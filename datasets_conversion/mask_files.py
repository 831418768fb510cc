"""Helpers for formats that ship one image/mask file per structure."""
from __future__ import annotations

import glob
import os
from typing import Dict, List

from nnunet_prompt_datasets.case_model import ConvertOptions
from nnunet_prompt_datasets.image_io import read_image
from nnunet_prompt_datasets.structure_map import StructureMap, identity_map

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def stem(path: str) -> str:
    name = os.path.basename(path)
    for ending in IMAGE_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def image_files(folder: str) -> List[str]:
    return sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(IMAGE_ENDINGS) and os.path.isfile(p))


def read_masks(files: Dict[str, str], patient: str) -> Dict[str, tuple]:
    return {name: (read_image(path, patient), path) for name, path in files.items()}


def map_or_identity(cases, options: ConvertOptions, source: str) -> StructureMap:
    """--structure-map if given, else the dataset's own names (the union over all cases)."""
    if options.structure_map:
        return StructureMap.load(options.structure_map)
    return identity_map({n for c in cases for n in c.files["masks"]}, source)

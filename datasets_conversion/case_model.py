"""What a format module hands to the shared conversion: one case's references and its loaded data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import SimpleITK as sitk


@dataclass
class ConvertOptions:
    structure_map: Optional[str] = None     # YAML path; None: the format's default
    strict: bool = False                    # unmapped structure names are errors
    overlap: str = "priority"               # "priority" or "regions"
    rgb_fusion: bool = False
    resample_oblique: bool = False
    modalities: Tuple[str, ...] = ()        # folder format: the channel files to read, reference first


@dataclass
class CaseRef:
    case_id: str
    source: str                              # the patient's folder (or main file), named in messages
    files: dict = field(default_factory=dict)


@dataclass
class LoadedCase:
    images: List[Tuple[str, sitk.Image, str]]                      # (modality, image, file); the first is the reference grid
    structures: Optional[Dict[str, Tuple[sitk.Image, str]]] = None  # source structure name -> (binary mask, file)
    label: Optional[sitk.Image] = None                              # or a ready label map (HECKTOR, MSD)
    label_file: str = ""
    notes: List[str] = field(default_factory=list)

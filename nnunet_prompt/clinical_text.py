"""The per-case clinical text sidecar of a raw dataset: the one place its format is defined.

File: ``<nnUNet_raw>/DatasetXXX_NAME/clinical_text.json`` (at the raw dataset root, where nnU-Net
ignores extra files; never in the preprocessed folder, whose dataset class refuses foreign files).

    {
      "format": "nnunet-prompt clinical text v1",
      "cases": {
        "<case identifier>": {
          "text": "Left-sided tumour, cT2N0M0.",          # free text given to text prompt models
          "fields": {"laterality": "left", "T": "T2", "N": "N0", "M": "M0"}   # optional, structured
        }
      }
    }

Written by the synthetic generator and by the converters (``--clinical table.csv``); read by text
trainers and by prompted inference.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from nnunet_prompt.io_utils import atomic_write_json

SIDECAR_FILENAME = "clinical_text.json"
SIDECAR_FORMAT = "nnunet-prompt clinical text v1"


def write_sidecar(dataset_folder: str, cases: Dict[str, dict]) -> str:
    for case, entry in cases.items():
        if not isinstance(entry.get("text"), str):
            raise ValueError(f"Clinical text entry for case '{case}' needs a 'text' string, got {entry!r}.")
    path = os.path.join(dataset_folder, SIDECAR_FILENAME)
    atomic_write_json({"format": SIDECAR_FORMAT, "cases": cases}, path)
    return path


def read_sidecar(dataset_folder: str) -> Dict[str, dict]:
    return read_sidecar_file(os.path.join(dataset_folder, SIDECAR_FILENAME))


def read_sidecar_file(path: str) -> Dict[str, dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No clinical text sidecar '{path}'. Write one with the converters' --clinical option "
                                f"or see nnunet_prompt/clinical_text.py for the format.")
    from nnunet_prompt.io_utils import InputFileError, read_json
    data = read_json(path, "Clinical text sidecar")
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT or not isinstance(data.get("cases"), dict):
        raise InputFileError(f"'{path}' is not a '{SIDECAR_FORMAT}' file: it needs \"format\": \"{SIDECAR_FORMAT}\" "
                             f"and a \"cases\" object (see nnunet_prompt/clinical_text.py).")
    return data["cases"]


def case_text(cases: Dict[str, dict], case: str, path_hint: Optional[str] = None) -> str:
    if case not in cases:
        raise KeyError(f"Case '{case}' has no clinical text in {path_hint or SIDECAR_FILENAME}. Add an entry for it.")
    return cases[case]["text"]

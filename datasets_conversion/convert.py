"""`nnunet-prompt convert`: any supported source -> nnUNet_raw/DatasetNNN_NAME, complete or not at all.

Every conversion: finds the cases, checks ids, converts cases (in parallel with -np, with a progress bar)
into a temporary folder beside the target, writes dataset.json with nnU-Net's generate_dataset_json, the
clinical text sidecar when asked, runs nnU-Net's verify_dataset_integrity, and only then renames the folder
into place. The source is only read. An existing target is refused unless ``overwrite`` (then it is replaced
as a whole), so a re-run gives the same dataset.
"""
from __future__ import annotations

import glob
import io
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from contextlib import redirect_stdout
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_prompt.clinical_text import write_sidecar
from nnunet_prompt.io_utils import atomic_path
from nnunet_prompt_datasets.case_conversion import (CODES_FOLDER, REPORT_FOLDER, convert_case, format_module)
from nnunet_prompt_datasets.case_model import CaseRef, ConvertOptions
from nnunet_prompt_datasets.channels import channel_modalities, channel_names
from nnunet_prompt_datasets.clinical_table import read_clinical_table
from nnunet_prompt_datasets.conversion_errors import ConversionError
from nnunet_prompt_datasets.label_merge import regions_from_combinations, relabel

FORMATS = ("dicom-rt", "segrap2023", "hanseg", "hecktor", "totalseg", "msd", "folder")


def safe_case_id(patient_id: str) -> str:
    """nnU-Net case identifiers become file names: keep letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", patient_id.strip()).strip("-") or "case"


def check_unique_ids(cases: List[CaseRef]) -> None:
    seen: Dict[str, CaseRef] = {}
    for c in cases:
        if c.case_id in seen:
            raise ConversionError(f"duplicate patient id '{c.case_id}': also found in '{seen[c.case_id].source}'.",
                                  c.case_id, c.source, "give every patient its own id (or remove the duplicate copy).")
        seen[c.case_id] = c


def target_folder(raw_root: str, dataset_id: int, name: str, overwrite: bool) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ConversionError(f"dataset name '{name}' may only hold letters, digits, '_' and '-'.", fix="choose another --name.")
    if not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id {dataset_id} must be between 1 and 999.", fix="choose another --dataset-id.")
    target = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    others = [p for p in glob.glob(os.path.join(raw_root, f"Dataset{dataset_id:03d}_*")) if os.path.abspath(p) != os.path.abspath(target)]
    if others:
        raise ConversionError(f"dataset id {dataset_id} is already used by '{others[0]}'.", file=others[0],
                              fix="choose another --dataset-id (nnU-Net needs ids to be unique).")
    if os.path.exists(target) and not overwrite:
        raise ConversionError("the target dataset exists already.", file=target,
                              fix="pass --overwrite to replace it as a whole, or choose another --dataset-id/--name.")
    return target


def _run_cases(format_name, cases, options, smap, tmp, num_processes) -> List[dict]:
    bar = tqdm(total=len(cases), desc=f"convert {format_name}", unit="patient")
    results = []
    try:
        if num_processes <= 1:
            for c in cases:
                results.append(convert_case(format_name, c, options, smap, tmp))
                bar.update()
        else:
            with ProcessPoolExecutor(num_processes) as pool:
                futures = [pool.submit(convert_case, format_name, c, options, smap, tmp) for c in cases]
                for f in futures:
                    results.append(f.result())      # re-raises the case's ConversionError, unchanged
                    bar.update()
    finally:
        bar.close()
    return results


def _relabel_regions(tmp: str, case_ids: List[str], names: List[str]):
    codes_folder = os.path.join(tmp, CODES_FOLDER)
    found = set()
    for c in case_ids:
        found |= set(np.unique(np.load(os.path.join(codes_folder, f"{c}.npy"))).tolist())
    value_of, regions, class_order = regions_from_combinations(sorted(found), names)
    for c in case_ids:
        reference = sitk.ReadImage(os.path.join(tmp, "imagesTr", f"{c}_0000.nii.gz"))
        label = sitk.GetImageFromArray(relabel(np.load(os.path.join(codes_folder, f"{c}.npy")), value_of))
        label.CopyInformation(reference)
        sitk.WriteImage(label, os.path.join(tmp, "labelsTr", f"{c}.nii.gz"))
    shutil.rmtree(codes_folder)
    return regions, class_order


def verify_with_nnunet(folder: str) -> None:
    """nnU-Net's own integrity check; its assertion messages become a ConversionError (and no dataset)."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    log = io.StringIO()
    try:
        with redirect_stdout(log):
            verify_dataset_integrity(folder, num_processes=1)
    except (AssertionError, RuntimeError, FileNotFoundError) as e:
        raise ConversionError(f"nnU-Net's dataset integrity check failed: {e} {log.getvalue()[-2000:]}",
                              file=folder, fix="see the message above; nothing was written.") from None


def convert_dataset(format_name: str, source: str, dataset_id: int, name: str, raw_root: str,
                    options: Optional[ConvertOptions] = None, clinical: Optional[str] = None,
                    num_processes: int = 1, overwrite: bool = False) -> str:
    """Convert ``source`` (read only) into ``raw_root/DatasetNNN_NAME`` and return that path."""
    options = options or ConvertOptions()
    if format_name not in FORMATS:
        raise ConversionError(f"unknown format '{format_name}'.", fix=f"use one of {', '.join(FORMATS)}.")
    if options.overlap not in ("priority", "regions"):
        raise ConversionError(f"unknown overlap policy '{options.overlap}'.", fix="use --overlap priority or regions.")
    if not os.path.isdir(source):
        raise ConversionError("the source folder does not exist.", file=source, fix="pass the dataset's top folder as SOURCE.")
    fmt = format_module(format_name)
    target = target_folder(raw_root, dataset_id, name, overwrite)
    cases = fmt.find_cases(source, options)
    if not cases:
        raise ConversionError(f"no cases found for format '{format_name}'.", file=source,
                              fix=f"check the expected layout: nnunet-prompt convert --help. {fmt.LAYOUT.splitlines()[0]}")
    check_unique_ids(cases)
    cases = sorted(cases, key=lambda c: c.case_id)
    smap = fmt.structure_map(cases, options)
    if options.overlap == "regions" and not getattr(fmt, "PER_STRUCTURE_MASKS", True):
        raise ConversionError(f"--overlap regions needs per-structure masks; '{format_name}' has one label map per case.",
                              fix="use --overlap priority (the default) for this format.")
    sidecar = None
    if clinical:
        sidecar = read_clinical_table(clinical, [c.case_id for c in cases],
                                      {c.files.get("patient_id", c.case_id): c.case_id for c in cases})
    with atomic_path(target) as tmp:
        for sub in ("imagesTr", "labelsTr", REPORT_FOLDER):
            os.makedirs(os.path.join(tmp, sub))
        results = _run_cases(format_name, cases, options, smap, tmp, num_processes)
        modalities = results[0]["modalities"]
        for r in results:
            if r["modalities"] != modalities:
                raise ConversionError(f"has modalities {r['modalities']}, other patients {modalities}.", r["case_id"],
                                      fix="give every patient the same images (nnU-Net needs the same channels per case).")
        regions_class_order = None
        if options.overlap == "regions" and any(r["codes"] for r in results):
            regions, regions_class_order = _relabel_regions(tmp, [c.case_id for c in cases], smap.names)
            labels = {"background": 0, **regions}
        else:
            labels = {"background": 0, **{n: smap.labels[n] for n in smap.names}}
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        generate_dataset_json(tmp, channel_names(modalities, options.rgb_fusion), labels, len(cases), ".nii.gz",
                              regions_class_order=regions_class_order, dataset_name=os.path.basename(target),
                              description=f"Converted by nnunet-prompt convert {format_name} from {os.path.abspath(source)}",
                              channel_modalities=channel_modalities(modalities, options.rgb_fusion),
                              overlap_policy=options.overlap, structure_map=smap.source)
        if sidecar is not None:
            write_sidecar(tmp, sidecar)
        verify_with_nnunet(tmp)
    return target

"""PET activity concentration (Bq/ml) -> SUV body weight, from the series' own DICOM header.

SUVbw = C [Bq/ml] * body weight [g] / (injected dose [Bq] decayed to the scan start). Units 'GML' are already
SUVbw and are kept. Anything else is refused: guessing a calibration would give silently wrong SUVs.
"""
from __future__ import annotations

from datetime import datetime

from nnunet_prompt_datasets.conversion_errors import ConversionError


def _time(date: str, time: str) -> datetime:
    time = (time or "000000").split(".")[0].ljust(6, "0")
    return datetime.strptime(f"{date}{time}", "%Y%m%d%H%M%S")


def suv_factor(ds, patient: str, path: str) -> float:
    units = str(getattr(ds, "Units", "")).upper()
    if units == "GML":
        return 1.0
    fix = "provide PET in Bq/ml with PatientWeight and RadiopharmaceuticalInformationSequence, or convert it to SUV first."
    if units != "BQML":
        raise ConversionError(f"PET Units '{units}' cannot be converted to SUV (need BQML or GML).", patient, path, fix)
    try:
        weight_g = float(ds.PatientWeight) * 1000.0
        info = ds.RadiopharmaceuticalInformationSequence[0]
        dose = float(info.RadionuclideTotalDose)
        half_life = float(info.RadionuclideHalfLife)
        if "RadiopharmaceuticalStartDateTime" in info:
            injected = datetime.strptime(str(info.RadiopharmaceuticalStartDateTime).split(".")[0][:14], "%Y%m%d%H%M%S")
        else:
            injected = _time(str(ds.SeriesDate), str(info.RadiopharmaceuticalStartTime))
        scan_start = _time(str(ds.SeriesDate), str(ds.SeriesTime))
    except (AttributeError, IndexError, KeyError, ValueError, TypeError) as e:
        raise ConversionError(f"PET header lacks what SUV needs ({e}).", patient, path, fix) from None
    if weight_g <= 0 or dose <= 0:
        raise ConversionError("PET PatientWeight or injected dose is zero.", patient, path, fix)
    decay_correction = str(getattr(ds, "DecayCorrection", "START")).upper()
    elapsed = (scan_start - injected).total_seconds() if decay_correction == "START" else 0.0
    return weight_g / (dose * 2.0 ** (-elapsed / half_life))

"""--clinical table.csv -> entries of the clinical text sidecar (format: nnunet_prompt/clinical_text.py).

The table has one row per patient: an id column (``patient_id``, ``case_id`` or ``id``; else the first column)
and any columns such as laterality, T, N, M, surgery. A ``text`` column is used verbatim; otherwise the text
is composed from the columns, e.g. "Left-sided tumour, cT2N0M0. Surgery: neck dissection."."""
from __future__ import annotations

import csv
from typing import Dict, Iterable

from nnunet_prompt_datasets.conversion_errors import ConversionError

ID_COLUMNS = ("patient_id", "case_id", "id", "patient")


def compose_text(fields: Dict[str, str]) -> str:
    f = {k.strip().casefold(): v.strip() for k, v in fields.items() if v and v.strip()}
    parts = []
    if "laterality" in f:
        parts.append(f"{f['laterality'].capitalize()}-sided tumour")
    tnm = "".join(f"{k.upper()}{f[k].upper().lstrip(k.upper())}" for k in ("t", "n", "m") if k in f)
    if tnm:
        parts.append(f"c{tnm}")
    text = ", ".join(parts) + ("." if parts else "")
    extra = [f"{k.replace('_', ' ').capitalize()}: {v}." for k, v in fields.items()
             if v and v.strip() and k.strip().casefold() not in ("laterality", "t", "n", "m")]
    return " ".join([text] + extra).strip()


def read_clinical_table(path: str, case_ids: Iterable[str], id_to_case: Dict[str, str]) -> Dict[str, dict]:
    """Sidecar entries for every case; ``id_to_case`` maps the table's patient ids to case identifiers."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConversionError(f"cannot read the clinical table ({e}).", file=path, fix="pass an existing CSV to --clinical.") from None
    if not rows:
        raise ConversionError("the clinical table has no rows.", file=path, fix="add a header and one row per patient.")
    columns = list(rows[0].keys())
    id_col = next((c for c in columns if c.strip().casefold() in ID_COLUMNS), columns[0])
    entries: Dict[str, dict] = {}
    for row in rows:
        pid = (row.get(id_col) or "").strip()
        case = id_to_case.get(pid, pid)
        if case in entries:
            raise ConversionError(f"patient id '{pid}' appears twice in the clinical table.", pid, path,
                                  "keep one row per patient.")
        fields = {k: (v or "").strip() for k, v in row.items() if k != id_col}
        text = fields.pop("text", "") or compose_text(fields)
        entries[case] = {"text": text, "fields": {k: v for k, v in fields.items() if v}}
    missing = [c for c in case_ids if c not in entries]
    if missing:
        raise ConversionError(f"no row for case(s) {missing} (id column '{id_col}').", missing[0], path,
                              "add a row per patient; the id must equal the patient id or the case id.")
    return {c: entries[c] for c in case_ids}

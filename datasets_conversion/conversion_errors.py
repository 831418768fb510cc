"""The one error type of the converters: it names the patient, the file and the fix."""
from __future__ import annotations

from typing import Optional


class ConversionError(RuntimeError):
    def __init__(self, message: str, patient: Optional[str] = None, file: Optional[str] = None,
                 fix: Optional[str] = None):
        self.patient, self.file, self.fix, self.reason = patient, file, fix, message
        where = ", ".join(x for x in (f"patient '{patient}'" if patient else "", f"file '{file}'" if file else "") if x)
        super().__init__((f"{where}: " if where else "") + message + (f" Fix: {fix}" if fix else ""))

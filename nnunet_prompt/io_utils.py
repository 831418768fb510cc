"""Writing outputs so that an interruption never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager


def atomic_write_json(obj, path: str, indent: int = 2) -> None:
    """Write JSON to a temporary file in the target folder, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on failure remove it.
    Works for files and for folders."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    tmp = os.path.join(folder, f".tmp_{os.getpid()}_{base}")
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    elif os.path.exists(tmp):
        os.remove(tmp)
    try:
        yield tmp
        if os.path.isdir(path) and os.path.isdir(tmp):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise

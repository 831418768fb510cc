"""Writing outputs so that an interruption never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager


class InputFileError(ValueError):
    """A user's input file that is missing, damaged or not what it should be; the message names the file."""


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def read_json(path: str, what: str = "JSON file"):
    """json.load with one clear message for a missing file, invalid JSON, or a key given twice in one object (JSON
    readers silently keep the last one, so a duplicated case entry would lose the first)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_refuse_duplicate_keys)
    except FileNotFoundError:
        raise InputFileError(f"{what} '{path}' does not exist.") from None
    except IsADirectoryError:
        raise InputFileError(f"{what} '{path}' is a folder, not a file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputFileError(f"{what} '{path}' is not valid JSON: {e}.") from None
    except _DuplicateKey as e:
        raise InputFileError(f"{what} '{path}' gives the key '{e}' twice (a duplicate key); JSON readers keep only the "
                             f"last one. Merge the two entries (several prompts of one case go in a list).") from None


def require_output_folder(path: str, flag: str = "-o") -> None:
    """Refuse an output path that is a file or cannot be created / written, before any work is done."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputFileError(f"Output path '{path}' ({flag}) is a file, not a folder: give a folder.")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputFileError(f"Output folder '{path}' ({flag}) cannot be created: '{parent}' is a file.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputFileError(f"Output folder '{path}' ({flag}) cannot be written: no write permission in '{parent}'.")


@contextmanager
def remove_new_outputs_on_failure(folder: str, keep: bool = False):
    """If the body fails, remove what it added to ``folder`` (and the folder, if it created it): a failed run
    leaves the output folder as it found it. Files that were there before are kept (and may have been rewritten
    by the body: use atomic writes for those). ``keep``: remove nothing (a run meant to be resumed)."""
    existed = os.path.isdir(folder)
    before = set(os.listdir(folder)) if existed else set()
    try:
        yield
    except BaseException:
        if os.path.isdir(folder) and not keep:
            if not existed:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                for name in set(os.listdir(folder)) - before:
                    p = os.path.join(folder, name)
                    shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)
        raise


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

"""Is an image file whole? Checked before a case is predicted or evaluated.

ITK's NIfTI reader (through SimpleITK, and so nnU-Net's reader) fills the missing part of a truncated ``.nii`` or
``.nii.gz`` with zeros and reports no error: a half-copied CT is segmented without a word. No maintained library
checks this (nibabel also reads lazily and fails only when the data is touched), so the check is written here: the
data a NIfTI header promises must be in the file. Other formats are checked by reading their header.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

from nnunet_prompt.io_utils import InputFileError


class ImageFileError(InputFileError):
    """A damaged or unreadable image file; the message names the file."""


# bytes per voxel of NIfTI datatype codes (ITK's reader sizes the data from the datatype, not from bitpix)
_DATATYPE_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                   1536: 16, 1792: 16, 2048: 32, 2304: 4}


def _nifti_data_end(header: bytes, path: str) -> int:
    """Byte offset where a NIfTI-1/-2 file's voxel data ends (data offset + voxels x bytes per voxel)."""
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348:  # NIfTI-1: dim int16[8] at 40, datatype int16 at 70, vox_offset float32 at 108
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype = struct.unpack(endian + "h", header[70:72])[0]
            vox_offset = struct.unpack(endian + "f", header[108:112])[0]
            first = 348  # nifti1_io: data never starts inside the header
            break
        if sizeof_hdr == 540:  # NIfTI-2: datatype int16 at 12, dim int64[8] at 16, vox_offset int64 at 168
            datatype = struct.unpack(endian + "h", header[12:14])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            first = 540
            break
    else:
        raise ImageFileError(f"'{path}' is not a NIfTI file (its header is damaged).")
    ndim = dims[0]
    if not 1 <= ndim <= 7 or not math.isfinite(vox_offset) or vox_offset < 0 or datatype not in _DATATYPE_BYTES:
        raise ImageFileError(f"'{path}' has a damaged NIfTI header (dim[0] {ndim}, datatype {datatype}, vox_offset "
                             f"{vox_offset}).")
    voxels = int(np.prod([max(int(d), 1) for d in dims[1:ndim + 1]], dtype=np.int64))
    return max(int(vox_offset), first) + voxels * _DATATYPE_BYTES[datatype]


def _gunzipped_length(path: str) -> int:
    """The length of a .gz file's content; gzip's own error for a truncated or corrupted stream."""
    n = 0
    with gzip.open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 24)
            if not chunk:
                return n
            n += len(chunk)


def check_image_file(path: str) -> None:
    """Raise ImageFileError if ``path`` is missing, truncated or unreadable."""
    if not os.path.isfile(path):
        raise ImageFileError(f"Image file '{path}' does not exist.")
    lower = path.lower()
    if lower.endswith((".nii", ".nii.gz")):
        try:
            with open(path, "rb") as f:
                gzipped = f.read(2) == b"\x1f\x8b"  # ITK also reads a .nii.gz that is not compressed
            if gzipped:
                with gzip.open(path, "rb") as f:
                    header = f.read(540)
                size = _gunzipped_length(path)
            else:
                with open(path, "rb") as f:
                    header = f.read(540)
                size = os.path.getsize(path)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise ImageFileError(f"Image file '{path}' is damaged or truncated ({e}). Copy it again from its "
                                 f"source.") from None
        if len(header) < 348:
            raise ImageFileError(f"Image file '{path}' is truncated (no complete NIfTI header).")
        expected = _nifti_data_end(header, path)
        if size < expected:
            raise ImageFileError(f"Image file '{path}' is truncated: it holds {size} bytes of the {expected} its "
                                 f"header promises. Copy it again from its source.")
        return
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise ImageFileError(f"Image file '{path}' cannot be read: {str(e).strip().splitlines()[-1]}") from None

"""Reading images with clear errors, and resampling secondary images onto the reference grid."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from nnunet_prompt_datasets.conversion_errors import ConversionError


def read_image(path: str, patient: str) -> sitk.Image:
    """SimpleITK read that turns its failures (non-orthonormal directions above all) into one clear message."""
    try:
        return sitk.ReadImage(path)
    except RuntimeError as e:
        text = str(e)
        if "orthonormal" in text.lower():
            # ITK cannot represent sheared voxel grids; rather than silently orthonormalising the affine
            # (which moves the image), we refuse and say how to fix the file.
            raise ConversionError("the image's direction matrix is not orthonormal (sheared or scaled affine), "
                                  "which SimpleITK/ITK cannot represent.", patient, path,
                                  "resample the image onto an orthonormal grid (e.g. with nibabel/3D Slicer) or fix "
                                  "its header (qform/sform) and convert again.") from None
        raise ConversionError(f"could not read the image ({text.strip().splitlines()[-1] if text.strip() else e}).",
                              patient, path, "check that the file is a complete image readable by SimpleITK.") from None


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def resample_onto(image: sitk.Image, reference: sitk.Image, is_mask: bool, default_value: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid in physical space (both must already be registered):
    linear for images, nearest neighbour for masks. Voxels outside the moving image get ``default_value``."""
    if same_grid(image, reference):
        out = sitk.Image(image)
        out.CopyInformation(reference)
        return out
    interpolator = sitk.sitkNearestNeighbor if is_mask else sitk.sitkLinear
    pixel = image.GetPixelID() if is_mask else sitk.sitkFloat32
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, default_value, pixel)


def axis_aligned_reference(image: sitk.Image) -> sitk.Image:
    """An identity-direction grid covering ``image`` (for --resample-oblique), with its spacing per nearest axis."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    size, spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
    corners = [np.array(image.TransformIndexToPhysicalPoint([int(c) for c in corner]))
               for corner in np.stack(np.meshgrid(*[[0, s - 1] for s in size], indexing="ij"), -1).reshape(-1, 3)]
    lo, hi = np.min(corners, 0), np.max(corners, 0)
    # spacing of the input axis that points most nearly along each world axis
    new_spacing = np.array([spacing[np.argmax(np.abs(d[axis]))] for axis in range(3)])
    new_size = np.ceil((hi - lo) / new_spacing).astype(int) + 1
    ref = sitk.Image([int(s) for s in new_size], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in new_spacing])
    ref.SetOrigin([float(v) for v in lo])
    return ref

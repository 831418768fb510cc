"""Image geometry and the exact mapping between raw voxel indices and nnU-Net's preprocessed grid.

nnU-Net's preprocessing (DefaultPreprocessor.run_case_npy) does, in this order:
  1. read the image into a numpy array in SimpleITK order (z, y, x), spacing reversed accordingly;
  2. transpose the axes with ``plans['transpose_forward']``;
  3. crop to the bounding box of nonzero voxels (``properties['bbox_used_for_cropping']``);
  4. resample to the configuration's spacing (new shape from ``compute_new_shape``) with
     skimage/scipy interpolation that aligns voxel *centres* (half-pixel convention): a voxel centre
     at index c of the cropped array lands at ``(c + 0.5) * new / old - 0.5``.
``PreprocessedGrid`` applies exactly these steps to coordinates, and their inverse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class ImageGeometry:
    """Geometry of a 3D image in SimpleITK conventions: size, spacing and origin in (x, y, z), direction
    as a row-major 3x3 matrix."""
    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def from_sitk(cls, img) -> "ImageGeometry":
        if img.GetDimension() != 3:
            raise ValueError(f"Only 3D images are supported, got a {img.GetDimension()}D image.")
        return cls(tuple(int(s) for s in img.GetSize()), tuple(float(s) for s in img.GetSpacing()),
                   tuple(float(o) for o in img.GetOrigin()), tuple(float(d) for d in img.GetDirection()))

    @classmethod
    def from_file(cls, path: str) -> "ImageGeometry":
        import SimpleITK as sitk
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()  # header only
        if reader.GetDimension() != 3:
            raise ValueError(f"Only 3D images are supported, '{path}' is {reader.GetDimension()}D.")
        return cls(tuple(int(s) for s in reader.GetSize()), tuple(float(s) for s in reader.GetSpacing()),
                   tuple(float(o) for o in reader.GetOrigin()), tuple(float(d) for d in reader.GetDirection()))

    @classmethod
    def from_nnunet_properties(cls, properties: dict, raw_shape_zyx: Sequence[int]) -> "ImageGeometry":
        """From the properties nnU-Net's SimpleITKIO reader returns (key 'sitk_stuff')."""
        if "sitk_stuff" not in properties:
            raise ValueError("The image was not read with a SimpleITK-based reader (no 'sitk_stuff' in its "
                             "properties); world-coordinate prompts need SimpleITK geometry (.nii.gz, .nrrd, .mha).")
        s = properties["sitk_stuff"]
        return cls(tuple(int(v) for v in raw_shape_zyx[::-1]), tuple(float(v) for v in s["spacing"]),
                   tuple(float(v) for v in s["origin"]), tuple(float(v) for v in s["direction"]))

    def _sitk_image(self):
        import SimpleITK as sitk
        # a 1-voxel image carries the geometry; SimpleITK's transforms do not depend on the size
        img = sitk.Image(1, 1, 1, sitk.sitkUInt8)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def world_to_index(self, point_mm: Sequence[float]) -> np.ndarray:
        """World (LPS, mm) -> continuous voxel index (x, y, z)."""
        return np.asarray(self._sitk_image().TransformPhysicalPointToContinuousIndex(
            tuple(float(v) for v in point_mm)), dtype=float)

    def index_to_world(self, index_xyz: Sequence[float]) -> np.ndarray:
        return np.asarray(self._sitk_image().TransformContinuousIndexToPhysicalPoint(
            tuple(float(v) for v in index_xyz)), dtype=float)

    def mismatch(self, other: "ImageGeometry", tol: float = 1e-4) -> Optional[str]:
        """Why ``other`` is not on this grid, or None."""
        if tuple(other.size) != tuple(self.size):
            return f"size {list(other.size)} != {list(self.size)}"
        for what in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(other, what)), np.asarray(getattr(self, what))
            if not np.allclose(a, b, atol=tol * max(1.0, float(np.abs(b).max()))):
                return f"{what} {a.round(5).tolist()} != {b.round(5).tolist()}"
        return None


class PreprocessedGrid:
    """Maps between raw voxel indices (x, y, z) and indices of nnU-Net's preprocessed array of one case.

    Preprocessed indices are in the preprocessed array's axis order (after ``transpose_forward``), i.e. the
    order of ``data[c, a0, a1, a2]`` that nnU-Net trains on.
    """

    def __init__(self, properties: dict, transpose_forward: Sequence[int], preprocessed_shape: Sequence[int]):
        self.transpose_forward = [int(i) for i in transpose_forward]
        self.bbox = [(int(lo), int(hi)) for lo, hi in properties["bbox_used_for_cropping"]]
        self.cropped_shape = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=float)
        self.shape = tuple(int(s) for s in preprocessed_shape)
        self.scale = np.asarray(self.shape, dtype=float) / self.cropped_shape
        # raw array shape in SimpleITK order (z, y, x)
        before = properties["shape_before_cropping"]  # transposed order
        raw = [0, 0, 0]
        for a, src in enumerate(self.transpose_forward):
            raw[src] = int(before[a])
        self.raw_shape_zyx = tuple(raw)
        self.crop_lo = np.asarray([lo for lo, _ in self.bbox], dtype=float)

    def _raw_xyz_to_transposed(self, xyz: np.ndarray) -> np.ndarray:
        zyx = np.asarray(xyz, dtype=float)[..., ::-1]
        return zyx[..., self.transpose_forward]

    def _transposed_to_raw_xyz(self, t: np.ndarray) -> np.ndarray:
        zyx = np.empty_like(np.asarray(t, dtype=float))
        zyx[..., self.transpose_forward] = t
        return zyx[..., ::-1]

    def raw_to_preprocessed(self, xyz: Sequence[float]) -> np.ndarray:
        """Continuous raw voxel index (x, y, z) -> continuous preprocessed index (transposed axis order)."""
        t = self._raw_xyz_to_transposed(np.asarray(xyz, dtype=float)) - self.crop_lo
        return (t + 0.5) * self.scale - 0.5

    def preprocessed_to_raw(self, idx: Sequence[float]) -> np.ndarray:
        t = (np.asarray(idx, dtype=float) + 0.5) / self.scale - 0.5 + self.crop_lo
        return self._transposed_to_raw_xyz(t)

    def nearest_voxel(self, idx: Sequence[float]) -> Tuple[int, int, int]:
        v = np.clip(np.round(np.asarray(idx, dtype=float)), 0, np.asarray(self.shape) - 1)
        return tuple(int(i) for i in v)

    def box_to_preprocessed(self, lo_xyz: Sequence[int], hi_xyz: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """Inclusive raw voxel box -> inclusive preprocessed voxel box (transposed order).

        A raw voxel i covers [i, i+1) in 'edge' coordinates u = index + 0.5; the preprocessed voxels whose
        centres fall inside the mapped edges are kept. A flat axis (2D box) maps to its nearest slice, and
        every axis keeps at least one voxel."""
        lo_t = self._raw_xyz_to_transposed(np.asarray(lo_xyz, dtype=float)) - self.crop_lo
        hi_t = self._raw_xyz_to_transposed(np.asarray(hi_xyz, dtype=float)) - self.crop_lo
        out_lo, out_hi = [], []
        for a in range(3):
            if lo_t[a] == hi_t[a]:
                c = int(np.clip(round((lo_t[a] + 0.5) * self.scale[a] - 0.5), 0, self.shape[a] - 1))
                out_lo.append(c)
                out_hi.append(c)
                continue
            first = int(np.ceil(lo_t[a] * self.scale[a] - 0.5))
            last = int(np.floor((hi_t[a] + 1) * self.scale[a] - 0.5))
            first, last = max(first, 0), min(last, self.shape[a] - 1)
            if last < first:  # box thinner than one preprocessed voxel: keep the nearest one
                c = int(np.clip(round(((lo_t[a] + hi_t[a]) / 2 + 0.5) * self.scale[a] - 0.5), 0, self.shape[a] - 1))
                first = last = c
            out_lo.append(first)
            out_hi.append(last)
        return tuple(out_lo), tuple(out_hi)

    def mask_to_preprocessed(self, mask_zyx: np.ndarray, configuration_manager, original_spacing_zyx) -> np.ndarray:
        """Raw mask (SimpleITK array order) -> binary mask on the preprocessed grid, with nnU-Net's own
        segmentation resampling function of this configuration."""
        m = np.asarray(mask_zyx, dtype=np.int16).transpose(self.transpose_forward)
        m = m[tuple(slice(lo, hi) for lo, hi in self.bbox)]
        spacing_t = [float(original_spacing_zyx[i]) for i in self.transpose_forward]
        target = list(configuration_manager.spacing)
        if len(target) == 2:  # 2d configuration: in-plane spacing only, slices keep theirs
            target = [spacing_t[0]] + target
        resampled = configuration_manager.resampling_fn_seg(m[None], self.shape, spacing_t, target)
        return np.asarray(resampled[0]) > 0


# Two spacings of "the volume a configuration works on", which differ for 2d configurations: nnU-Net's 2d spacing is
# in-plane only, and its preprocessed data are whole volumes whose slice spacing is the case's own.
def case_volume_spacing(configuration_spacing: Sequence[float], properties: dict, transpose_forward) -> list:
    """3D spacing of one case's preprocessed volume (a 2d configuration: the case's own slice spacing, which
    nnU-Net's DefaultPreprocessor keeps). For encoding a real case's prompts."""
    spacing = [float(v) for v in configuration_spacing]
    if len(spacing) == 2:
        spacing = [float(properties["spacing"][transpose_forward[0]])] + spacing
    return spacing


def median_volume_spacing(plans_manager, configuration_manager) -> list:
    """3D spacing of a typical preprocessed volume of the dataset (a 2d configuration: the dataset's median slice
    spacing). For the simulated user, which sees patches, not cases."""
    spacing = [float(v) for v in configuration_manager.spacing]
    if len(spacing) == 2:
        spacing = [float(plans_manager.plans['original_median_spacing_after_transp'][0])] + spacing
    return spacing

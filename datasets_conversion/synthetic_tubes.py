"""A synthetic neck CT with a structure longer than one patch: two look-alike tubes (carotid-like vessels).

The neck cross-section of ``synthetic_hn`` (body, vertebra, airway, extruded along z), and in it two tubes,
one left and one right, running along z over most of the volume and bending gently in x and y. Both come
from the same radius and intensity distributions; one of them, picked at random per case, is the target,
and only it is labelled. The tube is several patches long when the patch is planned smaller than the
volume (``benchmarks/psap_ablation.py``), which is the situation of CT-SAM3D's cross-patch prompt (CPP):
one click inside one patch has to segment the whole tube, and the image alone cannot tell which tube.

Writes imagesTr/labelsTr, imagesTs/labelsTs and dataset.json (nnU-Net raw format), atomically.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_prompt.io_utils import atomic_path
from nnunet_prompt_datasets.synthetic_hn import LESION_HU, TISSUE_HU, _ellipsoid


def make_tube_case(rng: np.random.Generator, shape_xyz=(64, 64, 80), spacing_xyz=(2.0, 2.0, 2.0),
                   origin=(-64.0, -80.0, 100.0), length_fraction: Tuple[float, float] = (0.8, 0.9)
                   ) -> Tuple[sitk.Image, sitk.Image]:
    shape = tuple(shape_xyz[::-1])  # z, y, x
    sp = tuple(spacing_xyz[::-1])
    ext = np.asarray(shape) * np.asarray(sp)
    img = np.full(shape, -1000.0, dtype=np.float32)
    cy, cx = ext[1] / 2 + rng.uniform(-4, 4), ext[2] / 2 + rng.uniform(-4, 4)
    body = _ellipsoid(shape, (ext[0] / 2, cy, cx), (1e6, ext[1] * rng.uniform(0.36, 0.42), ext[2] * rng.uniform(0.40, 0.45)), sp)
    img[body] = TISSUE_HU
    spine = _ellipsoid(shape, (ext[0] / 2, cy + ext[1] * 0.2, cx), (1e6, 9, 9), sp)
    img[spine] = 700.0
    airway = _ellipsoid(shape, (ext[0] / 2, cy - ext[1] * 0.12, cx), (1e6, 6, 7), sp)
    img[airway] = -900.0

    z_mm = (np.arange(shape[0]) + 0.5) * sp[0]
    yy, xx = np.meshgrid((np.arange(shape[1]) + 0.5) * sp[1], (np.arange(shape[2]) + 0.5) * sp[2], indexing="ij")
    tubes = []
    for sign in (-1, 1):  # patient right (-x), left (+x)
        length = rng.uniform(*length_fraction) * ext[0]
        z0 = rng.uniform(0.02, 0.98 - length / ext[0]) * ext[0]
        radius = rng.uniform(4.0, 5.5)
        x0 = cx + sign * rng.uniform(0.20, 0.26) * ext[2]
        y0 = cy + rng.uniform(-2, 6)
        ax, ay = rng.uniform(3, 7), rng.uniform(2, 5)          # bends of a few mm over the tube's length
        px, py = rng.uniform(0, 2 * np.pi, 2)
        tube = np.zeros(shape, bool)
        for k, z in enumerate(z_mm):
            if not z0 <= z <= z0 + length:
                continue
            t = (z - z0) / length
            x = x0 + ax * np.sin(2 * np.pi * t + px)
            y = y0 + ay * np.sin(np.pi * t + py)
            tube[k] = (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
        tube &= body & ~spine & ~airway
        tubes.append(tube)
        img[tube] = LESION_HU
    img += rng.normal(0, 12.0, size=img.shape).astype(np.float32)
    seg = tubes[int(rng.integers(2))].astype(np.uint8)

    def to_sitk(a):
        im = sitk.GetImageFromArray(a)
        im.SetSpacing(tuple(float(s) for s in spacing_xyz))
        im.SetOrigin(tuple(float(o) for o in origin))
        return im

    return to_sitk(img), to_sitk(seg)


def generate_synthetic_tube_dataset(raw_root: str, dataset_id: int = 993, name: str = "SyntheticTubes",
                                    num_training: int = 16, num_test: int = 6, seed: int = 0,
                                    shape_xyz: Sequence[int] = (64, 64, 80), spacing_xyz=(2.0, 2.0, 2.0),
                                    overwrite: bool = False) -> str:
    """Write DatasetXXX_NAME into ``raw_root`` and return its path; the folder appears complete or not at all."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    if os.path.isdir(folder):
        if not overwrite:
            return folder
        shutil.rmtree(folder)
    with atomic_path(folder) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            os.makedirs(os.path.join(tmp, sub))
        for i in range(num_training + num_test):
            img, seg = make_tube_case(np.random.default_rng([seed, i]), tuple(shape_xyz), tuple(spacing_xyz))
            split = "Tr" if i < num_training else "Ts"
            sitk.WriteImage(img, os.path.join(tmp, f"images{split}", f"tube_{i:03d}_0000.nii.gz"))
            sitk.WriteImage(seg, os.path.join(tmp, f"labels{split}", f"tube_{i:03d}.nii.gz"))
        generate_dataset_json(tmp, {0: "CT"}, {"background": 0, "vessel": 1}, num_training, ".nii.gz",
                              dataset_name=f"Dataset{dataset_id:03d}_{name}",
                              description="nnunet-prompt synthetic neck phantom: two look-alike tubes longer than a "
                                          "patch, one is the target", license="CC0")
    return folder


def main(argv: Optional[Sequence[str]] = None) -> None:
    import argparse
    p = argparse.ArgumentParser(description="Generate the synthetic two-tube neck CT dataset (nnU-Net raw format).")
    p.add_argument("raw_root", help="nnUNet_raw folder to write DatasetXXX_NAME into")
    p.add_argument("--dataset-id", type=int, default=993)
    p.add_argument("--name", default="SyntheticTubes")
    p.add_argument("--num-training", type=int, default=16)
    p.add_argument("--num-test", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    print(generate_synthetic_tube_dataset(a.raw_root, a.dataset_id, a.name, a.num_training, a.num_test, a.seed,
                                          overwrite=a.overwrite))


if __name__ == "__main__":
    main()

"""A small synthetic head-and-neck-like CT dataset in nnU-Net raw format, with the ambiguity prompts are for.

Each case is a neck-like cross-section extruded along z: air around a soft-tissue body, a vertebra
(bone) posteriorly, an airway anteriorly, and **two look-alike lesions**, one in the left and one in the
right neck, drawn from the same size and intensity distributions. Only one of them is the target
(the one "the clinician picked"), chosen at random per case; the label map holds only that one. An
image-only model therefore has to guess the side; a prompt (box, click) or the clinical text
("Left-sided tumour ...") resolves it.

Geometry is deliberately not trivial: anisotropic spacing (2 x 2 x 3 mm by default) and a non-zero
origin. Laterality follows the patient: in LPS world coordinates the patient's left is +x, and with
the identity direction used here that is increasing voxel x.

Writes imagesTr/labelsTr (training) and imagesTs/labelsTs (held-out), dataset.json, and the clinical
text sidecar (nnunet_prompt.clinical_text).
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_prompt.clinical_text import write_sidecar
from nnunet_prompt.io_utils import atomic_path

LESION_HU = 90.0
TISSUE_HU = 40.0
NODE_HU = 70.0
NODE_LABEL = 2  # with nodal_involvement > 0: label 2 = the involved ipsilateral lymph node


def _ellipsoid(shape_zyx, center_zyx_mm, radii_mm, spacing_zyx):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape_zyx, spacing_zyx)], indexing="ij")
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center_zyx_mm, radii_mm))
    return d <= 1.0


WORDINGS = ("fixed", "varied")
# "varied": clinical notes as different clinicians write them; the side and the stage sit at different places
# among words that say nothing about the target (subsite, HPV status, treatment intent, smoking)
VARIED_NOTES = (
    "{Side}-sided tumour, c{T}{N}M0.",
    "SCC of the {side} tonsil, stage c{T}{N}M0.",
    "Squamous cell carcinoma of the {side} base of tongue, c{T} {N} M0, p16 positive.",
    "{Side} oropharyngeal carcinoma; clinical stage {T}{N}M0; for definitive chemoradiotherapy.",
    "Biopsy-proven carcinoma arising in the {side} tonsillar fossa. Staging: c{T}{N}M0. Current smoker.",
    "c{T}{N}M0 squamous cell carcinoma, {side} oropharynx, HPV negative.",
    "{age}-year-old with a {T} {N} M0 primary of the {side} tonsil, no distant metastases.",
    "Primary: {side} tonsil. TNM: c{T} {N} M0. Plan: radical radiotherapy with concurrent cisplatin.",
    "Oropharyngeal SCC ({side} side), stage c{T}{N}M0, ex-smoker, good performance status.",
    "Known {side} tonsillar squamous cell carcinoma, c{T}{N}M0, referred for curative treatment.",
)


def clinical_note(rng: np.random.Generator, side: str, t_stage: str, n_stage: str, wording: str = "fixed") -> str:
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    template = VARIED_NOTES[int(rng.integers(len(VARIED_NOTES)))] if wording == "varied" else VARIED_NOTES[0]
    return template.format(side=side, Side=side.capitalize(), T=t_stage, N=n_stage, age=int(rng.integers(45, 80)))


def make_case(rng: np.random.Generator, shape_xyz=(64, 64, 32), spacing_xyz=(2.0, 2.0, 3.0),
              origin=(-64.0, -80.0, 200.0), num_lesions: int = 2,
              label_lookalikes: bool = False, nodal_involvement: float = 0.0,
              wording: str = "fixed") -> Tuple[sitk.Image, sitk.Image, dict]:
    shape = tuple(shape_xyz[::-1])  # numpy order z, y, x
    sp = tuple(spacing_xyz[::-1])
    ext = np.asarray(shape) * np.asarray(sp)  # mm, z y x
    img = np.full(shape, -1000.0, dtype=np.float32)

    cy, cx = ext[1] / 2 + rng.uniform(-4, 4), ext[2] / 2 + rng.uniform(-4, 4)
    body = _ellipsoid(shape, (ext[0] / 2, cy, cx), (1e6, ext[1] * rng.uniform(0.36, 0.42),
                                                      ext[2] * rng.uniform(0.40, 0.45)), sp)
    img[body] = TISSUE_HU
    spine = _ellipsoid(shape, (ext[0] / 2, cy + ext[1] * 0.2, cx), (1e6, 9, 9), sp)
    img[spine] = 700.0
    airway = _ellipsoid(shape, (ext[0] / 2, cy - ext[1] * 0.12, cx), (1e6, 6, 7), sp)
    img[airway] = -900.0

    sides = ["right", "left"] if num_lesions == 2 else [["right", "left"][i % 2] for i in range(num_lesions)]
    lesions = []
    for i, side in enumerate(sides):
        # patient right = -x (LPS), i.e. small voxel x with the identity direction
        sign = -1 if side == "right" else 1
        c = (rng.uniform(0.3, 0.7) * ext[0], cy + rng.uniform(-8, 6), cx + sign * rng.uniform(0.2, 0.27) * ext[2])
        r = rng.uniform(8.0, 12.0)
        radii = (r * rng.uniform(1.0, 1.4), r * rng.uniform(0.85, 1.15), r * rng.uniform(0.85, 1.15))
        m = _ellipsoid(shape, c, radii, sp) & body & ~spine & ~airway
        lesions.append((side, m))
        img[m] = LESION_HU
    nodes = {}
    if nodal_involvement > 0:  # a lymph node posterior-lateral on each side, visible whatever the N stage
        for side in ("right", "left"):
            sign = -1 if side == "right" else 1
            c = (rng.uniform(0.35, 0.65) * ext[0], cy + ext[1] * rng.uniform(0.12, 0.16),
                 cx + sign * rng.uniform(0.31, 0.34) * ext[2])
            m = _ellipsoid(shape, c, (rng.uniform(6, 8), rng.uniform(5, 6), rng.uniform(5, 6)), sp)
            m &= body & ~spine & ~airway & ~np.any([lm for _, lm in lesions], axis=0)
            nodes[side] = m
            img[m] = NODE_HU
    img += rng.normal(0, 12.0, size=img.shape).astype(np.float32)

    target_idx = int(rng.integers(len(lesions)))
    side, target = lesions[target_idx]
    seg = target.astype(np.uint8)
    if label_lookalikes:  # multi-class variant: the other lesions become label 2
        for i, (_, m) in enumerate(lesions):
            if i != target_idx:
                seg[m] = 2
    t_stage = f"T{int(rng.integers(1, 4))}"
    n_stage = "N0"
    if nodes and rng.uniform() < nodal_involvement:  # N1: the node on the tumour's side is part of the target
        n_stage = "N1"
        seg[nodes[side]] = NODE_LABEL
    fields = {"laterality": side, "T": t_stage, "N": n_stage, "M": "M0"}
    text = clinical_note(rng, side, t_stage, n_stage, wording)

    def to_sitk(a):
        im = sitk.GetImageFromArray(a)
        im.SetSpacing(tuple(float(s) for s in spacing_xyz))
        im.SetOrigin(tuple(float(o) for o in origin))
        return im

    return to_sitk(img), to_sitk(seg), {"text": text, "fields": fields}


def generate_synthetic_hn_dataset(raw_root: str, dataset_id: int = 990, name: str = "SyntheticHN",
                                  num_training: int = 20, num_test: int = 8, seed: int = 0,
                                  shape_xyz: Sequence[int] = (64, 64, 32), spacing_xyz=(2.0, 2.0, 3.0),
                                  num_lesions: int = 2, overwrite: bool = False, label_lookalikes: bool = False,
                                  nodal_involvement: float = 0.0, wording: str = "fixed") -> str:
    """Write DatasetXXX_NAME into ``raw_root`` and return its path. The folder appears complete or not at all.

    ``label_lookalikes`` gives a two-label variant (1 = tumour, 2 = the look-alike lesion(s)) for
    multi-class experiments; by default only the target is labelled.

    ``nodal_involvement`` > 0 gives the text-decides variant: every case shows a lymph node on each side,
    a share ``nodal_involvement`` of cases is N1, and then the node on the tumour's side is label 2
    ("node"). Only the text (laterality, N stage) tells which lesion and whether a node is a target.

    ``wording``: "fixed" writes every clinical note as "Left-sided tumour, cT2N0M0."; "varied" draws it from
    ``VARIED_NOTES`` (ten clinicians' ways of writing side and stage among unrelated words).

    A wide ``shape_xyz`` (e.g. (96, 48, 24)) with ``NarrowSmallPatchPlanner`` gives patches of less than half the
    body's width, as on a CT, so that a sliding window, not one patch, covers the neck."""
    if label_lookalikes and nodal_involvement > 0:
        raise ValueError("label_lookalikes and nodal_involvement both use label 2; choose one.")
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    if os.path.isdir(folder):
        if not overwrite:
            return folder
        shutil.rmtree(folder)
    texts: Dict[str, dict] = {}
    with atomic_path(folder) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            os.makedirs(os.path.join(tmp, sub))
        for i in range(num_training + num_test):
            rng = np.random.default_rng([seed, i])
            img, seg, text = make_case(rng, tuple(shape_xyz), tuple(spacing_xyz), num_lesions=num_lesions,
                                       label_lookalikes=label_lookalikes, nodal_involvement=nodal_involvement,
                                       wording=wording)
            split = "Tr" if i < num_training else "Ts"
            case = f"hn_{i:03d}"
            sitk.WriteImage(img, os.path.join(tmp, f"images{split}", f"{case}_0000.nii.gz"))
            sitk.WriteImage(seg, os.path.join(tmp, f"labels{split}", f"{case}.nii.gz"))
            texts[case] = text
        labels = {"background": 0, "tumour": 1, **({"lookalike": 2} if label_lookalikes else {}),
                  **({"node": NODE_LABEL} if nodal_involvement > 0 else {})}
        generate_dataset_json(tmp, {0: "CT"}, labels, num_training, ".nii.gz",
                              dataset_name=f"Dataset{dataset_id:03d}_{name}",
                              description="nnunet-prompt synthetic head-and-neck phantom: two look-alike lesions, "
                                          "one is the target", license="CC0")
        write_sidecar(tmp, texts)
    return folder


def main(argv: Optional[Sequence[str]] = None) -> None:
    import argparse
    p = argparse.ArgumentParser(description="Generate the synthetic head-and-neck-like CT dataset (nnU-Net raw format).")
    p.add_argument("raw_root", help="nnUNet_raw folder to write DatasetXXX_NAME into")
    p.add_argument("--dataset-id", type=int, default=990)
    p.add_argument("--name", default="SyntheticHN")
    p.add_argument("--num-training", type=int, default=20)
    p.add_argument("--num-test", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nodal-involvement", type=float, default=0.0,
                   help="share of N1 cases; > 0 adds a lymph node per side and labels the involved one (label 2)")
    p.add_argument("--wording", default="fixed", choices=WORDINGS,
                   help="clinical notes all alike (fixed) or in ten clinicians' wordings (varied)")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 32), metavar=("X", "Y", "Z"),
                   help="image size in voxels; a wide X (e.g. 96 48 24) with NarrowSmallPatchPlanner gives patches "
                        "narrower than half the body")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    print(generate_synthetic_hn_dataset(a.raw_root, a.dataset_id, a.name, a.num_training, a.num_test, a.seed,
                                        shape_xyz=tuple(a.shape), overwrite=a.overwrite,
                                        nodal_involvement=a.nodal_involvement, wording=a.wording))


if __name__ == "__main__":
    main()

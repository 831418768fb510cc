"""The direction of the text's effects, on a small, fast model: a tiny U-Net with the default text model
(MiniLM-L6, frozen; 2 prompt groups) trained for 500 steps on volumes where only the text tells which
lesion is the target (laterality) and whether the node on that side is a target too (N stage). The
full-size run through nnU-Net is benchmarks/text_behaviour.py."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_prompt.text.config import ClinicalContextConfig
from nnunet_prompt.text.language_model import DEFAULT_MODEL, TextModelSpec
from nnunet_prompt.text.text_unet import TextConditionedUNet

SHAPE = (8, 24, 24)  # z, y, x; patient left = +x


def _blob(shape, c, r):
    g = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum(((a - ci) / ri) ** 2 for a, ci, ri in zip(g, c, r)) <= 1


def make_sample(rng):
    side, n1 = rng.choice(["left", "right"]), bool(rng.integers(2))
    img = rng.normal(0, 0.3, SHAPE).astype(np.float32)
    seg = np.zeros(SHAPE, np.int64)
    for s in ("left", "right"):
        x = 17 if s == "left" else 6
        lesion = _blob(SHAPE, (4, rng.uniform(8, 11), x + rng.uniform(-1, 1)), (2.5, 3, 3))
        node = _blob(SHAPE, (4, rng.uniform(17, 19), x + (3 if s == "left" else -3)), (2, 2, 2))
        img[lesion] += 2.0
        img[node] += 1.5   # both sides show a lesion and a node: the image cannot tell the target
        if s == side:
            seg[lesion] = 1
            if n1:
                seg[node & ~lesion] = 2
    text = f"{side.capitalize()}-sided tumour, cT2{'N1' if n1 else 'N0'}M0."
    return img, seg, text


def build():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    torch.manual_seed(0)
    unet = PlainConvUNet(1, 3, [8, 16, 32], torch.nn.Conv3d, 3, [[1, 1, 1], [1, 2, 2], [2, 2, 2]], 2, 3, [1, 1], True,
                         torch.nn.InstanceNorm3d, {"affine": True}, nonlin=torch.nn.LeakyReLU, deep_supervision=False)
    cfg = ClinicalContextConfig(num_groups=2, vectors_per_group=2, text_model=TextModelSpec.from_source(DEFAULT_MODEL))
    net = TextConditionedUNet(unet, cfg.build_encoder(), cfg.entry_key)
    net.context_encoder.calibrate([f"{s}-sided tumour, cT2{n}M0." for s in ("Left", "Right") for n in ("N0", "N1")])
    return net


def swap_side(t):
    return t.replace("Left", "@").replace("Right", "Left").replace("@", "Right")


@pytest.fixture(scope="module")
def trained_small():
    net = build()
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    rng = np.random.default_rng(0)
    weights = torch.tensor([0.2, 1.0, 1.0])
    for step in range(500):
        batch = [make_sample(rng) for _ in range(4)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))[:, None]
        y = torch.from_numpy(np.stack([b[1] for b in batch]))
        with net.conditioned_on([{"text": b[2]} for b in batch]):
            loss = F.cross_entropy(net(x), y, weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    return net


def _predict(net, img, text):
    with torch.no_grad(), net.conditioned_on([{"text": text}]):
        return net(torch.from_numpy(img)[None, None]).argmax(1)[0].numpy()


def test_laterality_and_nodal_stage_in_the_text_move_the_prediction(trained_small):
    rng = np.random.default_rng(123)
    moved, added, n0_cases, correct_side = 0, 0, 0, 0
    for _ in range(12):
        img, seg, text = make_sample(rng)
        pred = _predict(trained_small, img, text)
        swapped = _predict(trained_small, img, swap_side(text))
        side_of = lambda m: None if not m.any() else ("left" if np.argwhere(m)[:, 2].mean() > SHAPE[2] / 2 else "right")
        correct_side += side_of(pred == 1) == ("left" if text.startswith("Left") else "right")
        moved += side_of(pred == 1) is not None and side_of(swapped == 1) not in (None, side_of(pred == 1))
        if "N0" in text:
            n0_cases += 1
            with_n1 = _predict(trained_small, img, text.replace("N0", "N1"))
            added += (with_n1 == 2).sum() > (pred == 2).sum()
    assert correct_side >= 10, f"tumour on the side the text names in only {correct_side}/12 cases"
    assert moved >= 9, f"swapping left/right moved the tumour in only {moved}/12 cases"
    assert n0_cases and added >= 0.75 * n0_cases, f"N0 -> N1 added node voxels in only {added}/{n0_cases} cases"

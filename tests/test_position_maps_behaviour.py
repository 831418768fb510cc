"""Laterality from the text when a patch covers less than half the image: a small U-Net with the default text model
(MiniLM-L6, frozen; 2 prompt groups) and text-steered position maps with the laterality contrast, trained for 600
steps of two random crops 24 voxels wide of volumes 64 wide (AdamW 1e-3 with poly decay, the demo schedule's), and
predicted with a sliding window. Each volume shows two look-alike lesions, one per side; the clinical note, in ten
wordings, says which is the tumour. The same training with patch-relative position (the positional information
removed) must not move the tumour when the text's side is swapped: the crops alone cannot say which side they are on.
Through nnU-Net's own training: benchmarks/text_laterality.py and tests/test_text_laterality.py."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_prompt.text.config import ClinicalContextConfig
from nnunet_prompt.text.image_position import NUM_POSITION_CHANNELS, position_channels
from nnunet_prompt.text.language_model import DEFAULT_MODEL, TextModelSpec
from nnunet_prompt.text.perturbation import swap_laterality
from nnunet_prompt.text.text_unet import TextConditionedUNet
from nnunet_prompt_datasets.synthetic_hn import clinical_note

SHAPE, CROP = (8, 24, 64), 24  # z, y, x; patient left = +x; lesions at x ~ 20 (right) and ~ 44 (left)
NUM_MAPS, STEPS, BATCH, LR = 8, 600, 2, 1e-3


def _blob(shape, c, r):
    g = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum(((a - ci) / ri) ** 2 for a, ci, ri in zip(g, c, r)) <= 1


def make_sample(rng):
    side = str(rng.choice(["left", "right"]))
    img = rng.normal(0, 0.3, SHAPE).astype(np.float32)
    seg = np.zeros(SHAPE, np.int64)
    for s in ("left", "right"):
        lesion = _blob(SHAPE, (4, rng.uniform(8, 14), (44 if s == "left" else 20) + rng.uniform(-3, 3)), (2.5, 3, 3))
        img[lesion] += 2.0
        if s == side:
            seg[lesion] = 1
    return img, seg, clinical_note(rng, side, f"T{rng.integers(1, 4)}", f"N{rng.integers(0, 2)}", "varied"), side


def _region(x0):
    return slice(0, SHAPE[0]), slice(0, SHAPE[1]), slice(x0, x0 + CROP)


def _input(img, region, whole_image_position):
    if not whole_image_position:
        return img[region][None]
    return np.concatenate([img[region][None], position_channels(SHAPE, region)], 0)


def train(whole_image_position: bool):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    torch.manual_seed(0)
    position = NUM_POSITION_CHANNELS if whole_image_position else 0
    unet = PlainConvUNet(1 + position + NUM_MAPS, 3, [8, 16, 32], torch.nn.Conv3d, 3, [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                         2, 2, [1, 1], True, torch.nn.InstanceNorm3d, {"affine": True}, nonlin=torch.nn.LeakyReLU,
                         deep_supervision=False)
    cfg = ClinicalContextConfig(num_groups=2, vectors_per_group=2, text_model=TextModelSpec.from_source(DEFAULT_MODEL))
    net = TextConditionedUNet(unet, cfg.build_encoder(), cfg.entry_key, 1, position, NUM_MAPS, laterality_contrast=True)
    rng = np.random.default_rng(0)
    cases = [make_sample(rng) for _ in range(200)]
    net.context_encoder.calibrate(sorted({c[2] for c in cases}))
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], LR, weight_decay=3e-5)
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = LR * (1 - step / STEPS) ** 0.9
        batch = [cases[i] for i in rng.integers(len(cases), size=BATCH)]
        regions = [_region(int(rng.integers(0, SHAPE[2] - CROP + 1))) for _ in batch]
        x = torch.from_numpy(np.stack([_input(b[0], r, whole_image_position) for b, r in zip(batch, regions)]))
        y = torch.from_numpy(np.stack([b[1][r] for b, r in zip(batch, regions)]))
        with net.conditioned_on([{"text": b[2]} for b in batch]):
            loss = F.cross_entropy(net(x), y, weight=torch.tensor([0.2, 1.0]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)  # as nnU-Net's train_step
        opt.step()
    return net.eval()


def predict(net, img, text, whole_image_position):
    """Sliding window of crops 8 voxels apart, softmax averaged."""
    out = torch.zeros(2, *SHAPE)
    with torch.no_grad(), net.conditioned_on([{"text": text}]):
        for x0 in range(0, SHAPE[2] - CROP + 1, 8):
            r = _region(x0)
            logits = net(torch.from_numpy(_input(img, r, whole_image_position))[None])
            out[(slice(None),) + r] += torch.softmax(logits, 1)[0]
    return out.argmax(0).numpy()


def side_of(mask):
    return None if not mask.any() else ("left" if np.argwhere(mask)[:, 2].mean() > SHAPE[2] / 2 else "right")


def evaluate(net, whole_image_position):
    rng = np.random.default_rng(123)
    named = moved = 0
    for _ in range(20):
        img, seg, text, side = make_sample(rng)
        own = side_of(predict(net, img, text, whole_image_position) == 1)
        swapped = side_of(predict(net, img, swap_laterality(text), whole_image_position) == 1)
        named += own == side
        moved += own == side and swapped not in (None, side)
    return named, moved


@pytest.fixture(scope="module")
def whole_image_model():
    return train(whole_image_position=True)


def test_position_maps_follow_the_texts_side_across_patches(whole_image_model):
    named, moved = evaluate(whole_image_model, True)
    assert named >= 18, f"tumour on the side the text names in only {named}/20 held-out cases"
    assert moved >= 18, f"swapping left/right moved the tumour in only {moved}/20 held-out cases"


def test_without_whole_image_position_the_side_is_not_learned():
    named, moved = evaluate(train(whole_image_position=False), False)
    assert moved <= 6, f"patch-relative position moved the tumour in {moved}/20 cases: the test above cannot fail"

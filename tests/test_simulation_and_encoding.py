"""Dense prompt encoding and the simulated user."""
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunet_prompt.interaction.simulation import (InteractionSimulator, SimulationPolicy, boundary_depth,
                                                  label_components)
from nnunet_prompt.prompts.encoding import BOX, MASK, NEG, POS, PromptEncoding, encode_preprocessed

SPACING = (3.0, 1.0, 1.0)


def test_click_balls_are_sized_in_millimetres():
    enc = PromptEncoding(click_radius_mm=4.0)
    ch = encode_preprocessed((20, 30, 30), SPACING, enc, positive=[(10, 15, 15)], negative=[(5, 5, 5)])
    pos = ch[POS].numpy().astype(bool)
    zs, ys, xs = np.nonzero(pos)
    # 4 mm radius: +-1 voxel at 3 mm spacing, +-4 voxels at 1 mm spacing
    assert (zs.min(), zs.max()) == (9, 11) and (ys.min(), ys.max()) == (11, 19) and (xs.min(), xs.max()) == (11, 19)
    assert ch[NEG, 5, 5, 5] == 1 and ch[NEG].sum() == ch[POS].sum()  # same ball shape
    assert ch[BOX].sum() == 0 and ch[MASK].sum() == 0


def test_box_and_mask_channels():
    enc = PromptEncoding()
    mask = np.zeros((8, 9, 10), bool)
    mask[2, 3, 4] = True
    ch = encode_preprocessed((8, 9, 10), SPACING, enc, boxes=[((1, 2, 3), (3, 4, 5)), ((6, 0, 0), (6, 8, 9))], mask=mask)
    assert ch[BOX].sum() == 27 + 90 and ch[BOX, 6].sum() == 90 and ch[BOX, 5].sum() == 0
    assert ch[MASK].sum() == 1 and ch[MASK, 2, 3, 4] == 1


def test_encoding_round_trips_through_json():
    enc = PromptEncoding(click_radius_mm=3.0)
    assert PromptEncoding.from_dict(json.loads(json.dumps(enc.to_dict()))) == enc
    with pytest.raises(ValueError, match="mismatch"):
        PromptEncoding().check_same(enc, "model X")


def test_components_match_scipy():
    g = torch.Generator().manual_seed(3)
    m = torch.rand(3, 12, 20, 20, generator=g) > 0.62
    labels = label_components(m).numpy()
    for i in range(3):
        ref, n = ndimage.label(m[i].numpy(), structure=np.ones((3, 3, 3)))
        inside = m[i].numpy()
        pairs = set(zip(labels[i][inside], ref[inside]))
        assert len(pairs) == n == len(np.unique(labels[i][inside]))
    assert not set(np.unique(labels[0])[1:]) & set(np.unique(labels[1])[1:])  # unique across the batch


def test_boundary_depth_is_chessboard_distance_with_the_border_as_boundary():
    g = torch.Generator().manual_seed(4)
    m = torch.rand(2, 10, 14, 16, generator=g) > 0.3
    depth = boundary_depth(m).numpy()
    for i in range(2):
        padded = np.pad(m[i].numpy(), 1)
        ref = ndimage.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1, 1:-1]
        np.testing.assert_array_equal(depth[i], ref)


def _blob(shape=(16, 32, 32), center=(8, 16, 16), r=(3, 7, 7)):
    zz, yy, xx = np.indices(shape)
    return torch.from_numpy(((zz - center[0]) / r[0]) ** 2 + ((yy - center[1]) / r[1]) ** 2 +
                            ((xx - center[2]) / r[2]) ** 2 <= 1)


def test_initial_prompts_are_inside_the_target_and_deterministic():
    target = torch.stack([_blob(), _blob(center=(6, 10, 20)), torch.zeros(16, 32, 32, dtype=torch.bool)])
    enc = PromptEncoding()
    a = InteractionSimulator(enc, SPACING, seed=7).initial_prompts(target, ["clicks", "box", "box+clicks"])
    b = InteractionSimulator(enc, SPACING, seed=7).initial_prompts(target, ["clicks", "box", "box+clicks"])
    c = InteractionSimulator(enc, SPACING, seed=8).initial_prompts(target, ["clicks", "box", "box+clicks"])
    assert torch.equal(a, b) and not torch.equal(a, c)
    # click balls are centred in the target: the ball's centre voxel is a target voxel
    assert a[0, POS].sum() > 0 and a[0, BOX].sum() == 0 and a[1, POS].sum() == 0
    assert bool(target[0][a[0, POS].bool()].any())
    # the box holds the whole target, widened by at most 20 mm per side
    box = a[1, BOX].bool()
    assert bool(box[target[1]].all())
    idx = torch.nonzero(box)
    t_idx = torch.nonzero(target[1])
    widening = torch.cat([t_idx.min(0).values - idx.min(0).values, idx.max(0).values - t_idx.max(0).values])
    assert bool((widening >= 0).all())
    assert bool((widening.view(2, 3).float() * torch.tensor(SPACING) <= 20.0 + 1e-6).all())
    assert a[2].sum() == 0  # empty target: no prompt
    assert a[:, MASK].sum() == 0  # round 1 has no mask


def test_refinement_clicks_at_the_largest_error_deepest_voxel():
    sim = InteractionSimulator(PromptEncoding(), SPACING, seed=0)
    target = _blob()
    pred = target.clone()
    pred[:, :, 16:] = False          # missed half of the target: false negatives
    fp = _blob(center=(8, 16, 3), r=(1, 1, 1))
    pred2 = target | fp              # small false positive only
    coords, kind = sim.next_clicks(torch.stack([pred, pred2]), torch.stack([target, target]))
    assert kind.tolist() == [1, 0]
    missed = (target & ~pred).numpy()
    assert missed[tuple(coords[0].tolist())]
    dt = ndimage.distance_transform_cdt(np.pad(missed, 1), metric="chessboard")[1:-1, 1:-1, 1:-1]
    assert dt[tuple(coords[0].tolist())] == dt.max()
    assert fp.numpy()[tuple(coords[1].tolist())]
    prompts = sim.refine(torch.zeros(2, 4, 16, 32, 32), torch.stack([pred, pred2]), torch.stack([target, target]))
    assert prompts[0, POS].sum() > 0 and prompts[0, NEG].sum() == 0
    assert prompts[1, NEG].sum() > 0 and prompts[1, POS].sum() == 0
    assert torch.equal(prompts[:, MASK].bool(), torch.stack([pred, pred2]))
    # a perfect prediction gets no click
    _, kind = sim.next_clicks(target[None], target[None])
    assert kind.tolist() == [-1]


def test_policy_validation():
    with pytest.raises(ValueError, match="initial_types"):
        SimulationPolicy(initial_types=("scribble",))
    with pytest.raises(ValueError, match="num_rounds"):
        SimulationPolicy(num_rounds=0)

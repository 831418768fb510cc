"""Per-object, per-slice boxes (the MedSAM study's box prompt): geometry and the simulator's "slice_boxes" type."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunet_prompt.interaction.simulation import DEFAULT_INITIAL_TYPES, InteractionSimulator, SimulationPolicy
from nnunet_prompt.interaction.slice_boxes import component_boxes, slice_box_channel, slice_boxes
from nnunet_prompt.prompts.encoding import BOX, MASK, NEG, POS, PromptEncoding


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _two_objects():
    """(X, Y, Z) = (5, 30, 40): slice 1 holds two objects (one touching the other diagonally would merge them),
    slice 2 one object, slices 0, 3, 4 nothing."""
    t = torch.zeros(5, 30, 40, dtype=torch.bool)
    t[1, 5:9, 5:10] = True
    t[1, 20:25, 28:33] = True
    t[2, 10:15, 12:20] = True
    return t


def test_components_on_one_slice_get_one_box_each():
    t = _two_objects()
    b = component_boxes(t)
    assert b.slice.tolist() == [1, 1, 2]
    assert sorted(zip(b.lo.tolist(), b.hi.tolist())) == [([5, 5], [8, 9]), ([10, 12], [14, 19]), ([20, 28], [24, 32])]
    # 8-connected: a diagonal neighbour joins the component, a gap of one voxel does not
    d = torch.zeros(1, 10, 10, dtype=torch.bool)
    d[0, 2, 2] = d[0, 3, 3] = d[0, 3, 5] = True
    assert len(component_boxes(d)) == 2
    # without margin the channel is exactly the union of the tight rectangles, one per component and slice
    ch = slice_box_channel(t, (3.0, 1.0, 1.0), (0.0, 0.0), _gen())
    ref = np.zeros(t.shape, bool)
    for s in range(t.shape[0]):
        lab, _ = ndimage.label(t[s].numpy(), structure=np.ones((3, 3)))
        for sl in ndimage.find_objects(lab):
            ref[s][sl] = True
    np.testing.assert_array_equal(ch.numpy(), ref)
    assert ch[[0, 3, 4]].sum() == 0, "slices without target get no box"


def test_margins_are_in_mm_per_side_and_clipped_to_the_slice():
    t = torch.zeros(1, 60, 60, dtype=torch.bool)
    t[0, 28:32, 28:32] = True
    spacing = (5.0, 0.5, 2.0)  # anisotropic in plane: 20 mm = 40 voxels along y, 10 along z
    seen_lo, seen_hi = [], []
    for seed in range(40):
        b = slice_boxes(t, spacing[1:], (0.0, 20.0), _gen(seed))
        m_lo = (torch.tensor([28, 28]) - b.lo[0]).numpy()
        m_hi = (b.hi[0] - torch.tensor([31, 31])).numpy()
        seen_lo.append(m_lo)
        seen_hi.append(m_hi)
        assert (b.lo >= 0).all() and b.hi[0, 0] <= 59 and b.hi[0, 1] <= 59
    lo, hi = np.array(seen_lo), np.array(seen_hi)
    # z: at most 10 voxels (20 mm at 2 mm), never clipped here; the four sides draw independent margins
    assert lo[:, 1].max() <= 10 and hi[:, 1].max() <= 10 and lo[:, 1].min() >= 0
    assert not np.array_equal(lo[:, 1], hi[:, 1])
    # y: up to 40 voxels (20 mm at 0.5 mm) but clipped at the slice's edges (28 below, 28 above)
    assert lo[:, 0].max() == 28 and hi[:, 0].max() == 28 and lo[:, 0].max() > lo[:, 1].max()
    # a fixed margin: 4 mm = 8 voxels along y, 2 along z
    b = slice_boxes(t, spacing[1:], (4.0, 4.0), _gen())
    assert b.lo.tolist() == [[20, 26]] and b.hi.tolist() == [[39, 33]]


def test_same_seed_same_boxes():
    t = _two_objects()
    a = slice_box_channel(t, (3.0, 1.0, 1.0), (0.0, 20.0), _gen(3))
    b = slice_box_channel(t, (3.0, 1.0, 1.0), (0.0, 20.0), _gen(3))
    c = slice_box_channel(t, (3.0, 1.0, 1.0), (0.0, 20.0), _gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_simulator_slice_boxes_type():
    assert "slice_boxes" not in DEFAULT_INITIAL_TYPES and "slice_boxes" not in SimulationPolicy().initial_types
    t = torch.stack([_two_objects(), torch.zeros(5, 30, 40, dtype=torch.bool), _two_objects()])
    sim = InteractionSimulator(PromptEncoding(), (3.0, 1.0, 1.0), SimulationPolicy(initial_types=("slice_boxes",)),
                               seed=5)
    out = sim.initial_prompts(t)
    assert out[:, [POS, NEG, MASK]].sum() == 0, "boxes only"
    assert out[1].sum() == 0, "an empty target gets no prompt"
    for i in (0, 2):
        box = out[i, BOX].bool()
        assert bool(box[t[i]].all()) and box[[0, 3, 4]].sum() == 0
        assert box[1].sum() > 0 and box[2].sum() > 0
    # one batch = as many independent draws: the two identical targets get different margins
    assert not torch.equal(out[0], out[2])
    again = InteractionSimulator(PromptEncoding(), (3.0, 1.0, 1.0), SimulationPolicy(initial_types=("slice_boxes",)),
                                 seed=5).initial_prompts(t)
    assert torch.equal(out, again)
    # a 2D patch as a one-slice volume (1, Y, Z): one box per component (small margins: they stay apart)
    patch = _two_objects()[1:2][None]
    near = InteractionSimulator(PromptEncoding(), (3.0, 1.0, 1.0), SimulationPolicy(box_margin_mm=(0.0, 3.0)))
    one = near.initial_prompts(patch, ["slice_boxes"])
    assert ndimage.label(one[0, BOX, 0].numpy())[1] == 2


def test_unknown_prompt_type_is_refused():
    sim = InteractionSimulator(PromptEncoding(), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="unknown initial prompt type"):
        sim.initial_prompts(_two_objects()[None], ["slice-box"])

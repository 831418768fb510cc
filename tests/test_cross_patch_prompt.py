"""Cross-patch prompt module (CT-SAM3D's CPP): its target, its loss, and that it can learn the task."""
import torch

from nnunet_prompt.networks.cross_patch_prompt import CrossPatchPromptNet, centroid_heatmap, cross_patch_loss


def test_heatmap_peaks_at_the_centroid_with_sigma_in_millimetres():
    m = torch.zeros(2, 9, 20, 20, dtype=torch.bool)
    m[0, 2:7, 4:9, 10:17] = True  # centroid (4, 6, 13)
    h = centroid_heatmap(m, spacing=(3.0, 1.0, 1.0), sigma_mm=4.0)
    assert h.shape == (2, 1, 9, 20, 20)
    assert tuple(torch.nonzero(h[0, 0] == h[0, 0].max())[0].tolist()) == (4, 6, 13) and float(h[0, 0].max()) == 1.0
    assert float(h[1].abs().max()) == 0.0  # empty mask: nothing to click
    # one voxel away costs 3 mm along the first axis, 1 mm along the others
    assert torch.isclose(h[0, 0, 5, 6, 13], torch.exp(torch.tensor(-9 / 32)))
    assert torch.isclose(h[0, 0, 4, 7, 13], torch.exp(torch.tensor(-1 / 32)))


def _pair(gen, n=4, shape=(8, 16, 16)):
    """Two overlapping views (V = U shifted by 4 voxels along the last axis) of a noisy image with a bright blob."""
    full = 0.3 * torch.randn(n, 1, shape[0], shape[1], shape[2] + 4, generator=gen)
    masks = torch.zeros(n, shape[0], shape[1], shape[2] + 4, dtype=torch.bool)
    for i in range(n):
        c = torch.randint(3, shape[1] - 3, (2,), generator=gen)
        masks[i, 2:6, c[0] - 2:c[0] + 3, c[1] - 2 + 2:c[1] + 3 + 2] = True
    full[:, 0][masks] += 2.0
    u, v = full[..., :shape[2]], full[..., 4:]
    mu, mv = masks[..., :shape[2]], masks[..., 4:]
    return u, mu, v, mv


def test_output_depends_on_every_input_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    cpp = CrossPatchPromptNet(image_channels=1, features=(4, 8))
    u, mu, v, mv = _pair(torch.Generator().manual_seed(0), n=2)
    with torch.no_grad():
        ref = cpp(u, mu[:, None], v)
    assert ref.shape == (2, 1, 8, 16, 16) and 0 <= float(ref.min()) and float(ref.max()) <= 1
    with torch.no_grad():
        for args in ((u.flip(-1), mu[:, None], v), (u, ~mu[:, None], v), (u, mu[:, None], v.flip(-1))):
            assert not torch.allclose(ref, cpp(*args))
    cross_patch_loss(cpp, u, mu[:, None].float(), mu, v, mv[:, None].float(), mv, spacing=(3, 2, 2)).backward()
    missing = [n for n, p in cpp.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing


def test_it_learns_to_point_at_the_object_in_the_neighbour_patch():
    """Trainability, not cross-patch reasoning: in this toy the blob is also visible in V itself. The trained
    module must beat the trivial answer 'no click anywhere' (all zeros) by a wide margin."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    cpp = CrossPatchPromptNet(image_channels=1, features=(4, 8))
    opt = torch.optim.Adam(cpp.parameters(), lr=1e-2)
    u, mu, v, mv = _pair(torch.Generator().manual_seed(99))
    no_click = float(centroid_heatmap(mv, (3, 2, 2)).square().mean() + centroid_heatmap(mu, (3, 2, 2)).square().mean())

    def loss_of(pair):
        u, mu, v, mv = pair
        return cross_patch_loss(cpp, u, mu[:, None].float(), mu, v, mv[:, None].float(), mv, spacing=(3, 2, 2))

    for _ in range(150):
        opt.zero_grad()
        loss_of(_pair(gen)).backward()
        opt.step()
    with torch.no_grad():
        after = float(loss_of((u, mu, v, mv)))
    assert after < 0.3 * no_click, (no_click, after)

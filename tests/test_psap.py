"""PSAPTrainer (CT-SAM3D): clicks and the previous mask modulate nnU-Net's decoder, not its input.

Unit tests on the network (both U-Net families nnU-Net plans), one training step through nnU-Net's own
trainer code in this process (gradients of every parameter), and `nnUNetv2_train` end to end: training,
final validation with simulated clicks, resuming with --c."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import CONFIG, PLANS, train_demo_trainer
from nnunet_prompt.networks.psap import PSAPNorm, PSAPUNet
from nnunet_prompt.prompts.encoding import BOX, MASK, NEG, POS, draw_balls

TRAINER = "PSAPTrainer_demo"


def _unet(arch: str, deep_supervision: bool = True):
    from dynamic_network_architectures.architectures import unet as dna
    per_stage = 1 if arch == "PlainConvUNet" else [1, 1, 1]
    return getattr(dna, arch)(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], per_stage, 2, [1, 1], True,
                              torch.nn.InstanceNorm3d, {"affine": True, "eps": 1e-5}, nonlin=torch.nn.LeakyReLU,
                              deep_supervision=deep_supervision)


def _input(clicks=(), negative=(), mask=None, box=None, shape=(8, 16, 16)):
    x = torch.zeros(1, 5, *shape)
    x[:, 0] = torch.linspace(-1, 1, shape[-1])  # a non-constant image
    draw_balls(x[0, 1 + POS], torch.tensor(clicks, dtype=torch.float).view(-1, 3), (1.0, 1.0, 1.0))
    draw_balls(x[0, 1 + NEG], torch.tensor(negative, dtype=torch.float).view(-1, 3), (1.0, 1.0, 1.0))
    if mask is not None:
        x[0, 1 + MASK][mask] = 1
    if box is not None:
        x[0, 1 + BOX][box] = 1
    return x


def _full_res_psap_outputs(net, x):
    """Outputs of the PSAP norms of the last (full-resolution) decoder stage, and their gamma / beta maps."""
    seen = {}
    last = net.stage_norms[-1][0]
    hooks = [last.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o.detach())),
             last.gamma.register_forward_hook(lambda m, i, o: seen.__setitem__("gamma", o.detach())),
             last.beta.register_forward_hook(lambda m, i, o: seen.__setitem__("beta", o.detach()))]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("arch", ["PlainConvUNet", "ResidualEncoderUNet"])
def test_every_decoder_stage_is_modulated_and_the_encoder_sees_the_image_only(arch):
    unet = _unet(arch)
    net = PSAPUNet(unet, num_prompt_channels=4)
    assert len(net.stage_norms) == len(unet.decoder.stages) == 2
    for stage, norms in zip(unet.decoder.stages, net.stage_norms):
        assert [b.norm for b in stage.convs] == norms and all(isinstance(n, PSAPNorm) for n in norms)
        assert all(b.norm in list(b.all_modules) for b in stage.convs)  # what the block's forward runs
    # nnU-Net's own encoder norms are untouched, and its first conv takes the one image channel
    assert not any(isinstance(m, PSAPNorm) for m in unet.encoder.modules())
    first_conv = next(m for m in unet.encoder.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 1
    out = net(_input(clicks=[(4, 8, 8)]))
    assert [o.shape[2:] for o in out] == [(8, 16, 16), (4, 8, 8)]
    # M is an argument of the norms, never state: no tensor is left on them after a call
    assert not any(torch.is_tensor(v) for norms in net.stage_norms for n in norms for v in vars(n).values())


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_psap_decoder_runs_nnunets_decoder_step_for_step(deep_supervision):
    """PSAPUNet.decode writes out UNetDecoder.forward to pass M to the norms; with each PSAP norm bound to its
    stage's M, nnU-Net's own decoder forward must give exactly the same outputs."""
    from nnunet_prompt.networks.psap import resize_prompt
    net = PSAPUNet(_unet("PlainConvUNet"), num_prompt_channels=4).eval()
    net.unet.decoder.deep_supervision = deep_supervision
    x = _input(clicks=[(4, 8, 8)], negative=[(2, 3, 3)])
    with torch.no_grad():
        skips = net.unet.encoder(x[:, :1])
        m = net.psap_prompt(x)
        ours = net.decode(skips, m)

        class Bound(torch.nn.Module):  # a norm called as norm(x), with its stage's M fixed
            def __init__(self, norm, m_s):
                super().__init__()
                self.norm, self.m_s = norm, m_s

            def forward(self, feats):
                return self.norm(feats, self.m_s)

        for s, stage in enumerate(net.unet.decoder.stages):
            m_s = resize_prompt(m, skips[-(s + 2)].shape[2:])
            for block in stage.convs:
                i = [k for k, mod in enumerate(block.all_modules) if isinstance(mod, PSAPNorm)][0]
                block.all_modules[i] = Bound(block.all_modules[i], m_s)
        theirs = net.unet.decoder(skips)
    ours, theirs = (ours, theirs) if deep_supervision else ([ours], [theirs])
    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_a_click_changes_the_decoder_features_at_its_location():
    torch.manual_seed(0)
    net = PSAPUNet(_unet("PlainConvUNet"), num_prompt_channels=4).eval()
    here, there = (4, 4, 4), (4, 11, 11)
    a = _full_res_psap_outputs(net, _input(clicks=[here]))
    b = _full_res_psap_outputs(net, _input(clicks=[there]))
    # at the clicked voxel the modulated features differ
    assert (a["out"][0, :, 4, 4, 4] - b["out"][0, :, 4, 4, 4]).abs().max() > 1e-3
    assert (a["out"][0, :, 4, 11, 11] - b["out"][0, :, 4, 11, 11]).abs().max() > 1e-3
    # spatially aligned: at full resolution gamma and beta change only within the two balls (radius 1)
    # plus the two 3x3x3 convolutions' reach (2 voxels); elsewhere they are identical
    for key in ("gamma", "beta"):
        diff = (a[key] - b[key]).abs().amax(1)[0]
        near = torch.zeros_like(diff, dtype=torch.bool)
        for c in (here, there):
            near[max(c[0] - 3, 0):c[0] + 4, c[1] - 3:c[1] + 4, c[2] - 3:c[2] + 4] = True
        assert float(diff[near].max()) > 1e-4 and float(diff[~near].max()) == 0.0


def test_negative_clicks_and_the_previous_mask_modulate_and_the_box_is_ignored():
    torch.manual_seed(0)
    net = PSAPUNet(_unet("PlainConvUNet", deep_supervision=False), num_prompt_channels=4).eval()
    blob = torch.zeros(8, 16, 16, dtype=torch.bool)
    blob[2:6, 4:12, 4:12] = True
    with torch.no_grad():
        ref = net(_input(clicks=[(4, 8, 8)]))
        assert not torch.allclose(ref, net(_input(clicks=[(4, 8, 8)], negative=[(4, 2, 2)])))
        assert not torch.allclose(ref, net(_input(clicks=[(4, 8, 8)], mask=blob)))
        # the box channel is not part of M = [P, N, Y] (CT-SAM3D has no box; PSAPTrainer never simulates one)
        assert torch.equal(ref, net(_input(clicks=[(4, 8, 8)], box=blob)))


def test_eq2_without_the_residual_gamma_is_available():
    norm = PSAPNorm(4, torch.nn.Conv3d, residual_gamma=False)
    x = torch.randn(1, 4, 4, 4, 4)
    m = torch.zeros(1, 3, 4, 4, 4)
    with torch.no_grad():
        h = norm.shared(m)
        expected = norm.gamma(h) * torch.nn.functional.instance_norm(x, eps=1e-5) + norm.beta(h)
        assert torch.allclose(norm(x, m), expected)


@pytest.mark.parametrize("arch", ["PlainConvUNet", "ResidualEncoderUNet"])
def test_every_trainable_parameter_gets_a_gradient(arch):
    """DDP (-num_gpus) wraps the network without find_unused_parameters: nothing may be left out."""
    torch.manual_seed(0)
    net = PSAPUNet(_unet(arch), num_prompt_channels=4)
    blob = torch.zeros(8, 16, 16, dtype=torch.bool)
    blob[2:6, 4:12, 4:12] = True
    sum(o.square().mean() for o in net(_input(clicks=[(4, 8, 8)], negative=[(2, 3, 3)], mask=blob))).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing


def _trainer(planned_dataset, name):
    from nnunetv2.utilities.file_path_utilities import load_json
    import nnunet_prompt_trainers.PSAPTrainer as module
    pre = os.path.join(planned_dataset["env"]["nnUNet_preprocessed"], planned_dataset["name"])
    return getattr(module, name)(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=False), CONFIG, 0,
                                 load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))


def test_a_training_step_through_nnunets_trainer_reaches_every_parameter(planned_dataset, monkeypatch):
    """nnU-Net's own train_step (loss with deep supervision, optimizer) on a batch from nnU-Net's own data
    loader, with PSAPTrainer's simulated clicks; afterwards every trainable parameter holds a gradient."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = _trainer(planned_dataset, "PSAPTrainer")
    assert trainer.simulation_policy.initial_types == ("clicks",) and trainer.simulation_policy.num_rounds == 5
    trainer.initialize()
    net = trainer.network
    assert isinstance(net, PSAPUNet)
    image_channels = len(trainer.dataset_json["channel_names"])
    assert next(m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv3d)).in_channels == image_channels
    dl_train, _ = trainer.get_dataloaders()
    batch = next(dl_train)
    # the simulated first round: clicks only, no box, no mask
    target = trainer.select_targets([t.to(trainer.device) for t in batch["target"]])
    first = trainer.simulate_prompts(batch["data"], target[0], rounds=1)
    assert first[:, POS].sum() > 0 and first[:, BOX].sum() == 0 and first[:, MASK].sum() == 0
    # the deep-supervision loss weights nnU-Net uses under DDP (-num_gpus N, no compile): its lowest-resolution
    # head gets 1e-6 instead of 0 (a 0 weight skips that head, which DDP reports as an unused parameter)
    w = np.array([1 / 2 ** i for i in range(len(trainer.loss.weight_factors))])
    w[-1] = 1e-6
    trainer.loss.weight_factors = tuple(w / w.sum())
    net.train()
    loss = trainer.train_step(batch)["loss"]
    assert np.isfinite(loss)
    missing = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing
    # deep supervision off (as in nnU-Net's final validation): one full-resolution output
    trainer.set_deep_supervision_enabled(False)
    with torch.no_grad():
        out = net(torch.cat([batch["data"], first], 1))
    assert torch.is_tensor(out) and out.shape[2:] == batch["data"].shape[2:] and out.shape[1] == 2


@pytest.fixture(scope="module")
def psap_trained(planned_dataset):
    """PSAPTrainer_demo, 1 epoch of 2 iterations, through `nnUNetv2_train` (found through nnUNet_extTrainer)."""
    return train_demo_trainer(planned_dataset, TRAINER, 2)


def test_psap_trainer_through_nnunetv2_train_and_final_validation_with_clicks(psap_trained):
    folder = psap_trained["folder"]
    ckpt = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    weights = ckpt["network_weights"]
    first_conv = next(v for k, v in weights.items() if k.startswith("unet.encoder") and v.ndim == 5)
    assert first_conv.shape[1] == 1, "the encoder takes the CT channel only"
    assert any(".gamma." in k for k in weights) and any(".beta." in k for k in weights)
    assert ckpt["trainer_name"] == TRAINER and ckpt["current_epoch"] == 1
    assert "prompt simulation" in "".join(open(os.path.join(folder, "fold_0", f)).read()
                                          for f in os.listdir(os.path.join(folder, "fold_0")) if f.startswith("training_log"))
    val = os.path.join(folder, "fold_0", "validation")
    assert "foreground_mean" in json.load(open(os.path.join(val, "summary.json")))
    used = json.load(open(os.path.join(val, "simulated_prompts_rank0.json")))
    assert used and all(info["prompt"] == "clicks" for info in used.values())


def test_checkpoint_resumes_through_nnunets_load_checkpoint(psap_trained, planned_dataset, monkeypatch):
    """What `--c` does (nnUNetTrainer.load_checkpoint on a fresh trainer), in this process: the PSAP weights and
    the optimizer state come back and training continues. The CLI `--c` path itself is tested for
    PromptTrainer in test_end_to_end.py and for PSAPTrainer_CPP in test_psap_cpp.py."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    path = os.path.join(psap_trained["folder"], "fold_0", "checkpoint_final.pth")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    trainer = _trainer(planned_dataset, TRAINER)
    trainer.load_checkpoint(path)
    assert trainer.current_epoch == 1
    state = trainer.network.state_dict()
    assert state.keys() == saved["network_weights"].keys()
    assert all(torch.equal(state[k], v) for k, v in saved["network_weights"].items())
    dl_train, _ = trainer.get_dataloaders()
    trainer.network.train()
    assert np.isfinite(trainer.train_step(next(dl_train))["loss"])

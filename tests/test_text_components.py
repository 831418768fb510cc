"""Text prompt tuning, fusion and the stored language-model choice, on small models the tests build and save."""
import os
import shutil

import pytest
import torch

from nnunet_prompt.text.category_encoding import CategoryEncoding
from nnunet_prompt.text.config import ClinicalContextConfig
from nnunet_prompt.text.fusion import TwoWayTextFusion
from nnunet_prompt.text.language_model import DEFAULT_MODEL, ENV_VAR, TextModelError, TextModelSpec
from nnunet_prompt.text.prompt_tuning import TextPromptTuning

TEXTS = ["Left-sided tumour, cT2N1M0.", "Right-sided tumour, cT1N0M0, no nodal involvement."]


def test_language_model_frozen_and_outside_the_module_tree(tiny_bert):
    enc = TextPromptTuning(TextModelSpec.from_source(tiny_bert), num_groups=3, vectors_per_group=4)
    assert {n for n, _ in enc.named_parameters()} == {"prompt_vectors", "seg_embedding"}
    assert set(enc.state_dict()) == {"prompt_vectors", "seg_embedding", "standardize.running_mean",
                                     "standardize.running_var", "standardize.num_updates"}
    out = enc(TEXTS)
    assert out.shape == (2, 3, 32)
    out.square().sum().backward()
    assert enc.prompt_vectors.grad is not None and enc.prompt_vectors.grad.abs().sum() > 0
    assert enc.seg_embedding.grad.abs().sum() > 0
    lm = enc.language_model
    assert all(not p.requires_grad and p.grad is None for p in lm.parameters())
    # an optimizer built the nnU-Net way (network.parameters()) holds no language-model weight
    opt = torch.optim.AdamW(enc.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 3 * 4 * 32 + 32


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_gpt2"])
def test_eq1_layout_of_the_language_model_input(model, request):
    """t_n = {first special token, v^n_1..v^n_M, [TEXT], [SEG]}: read off what the model really receives."""
    folder = request.getfixturevalue(model)
    enc = TextPromptTuning(TextModelSpec.from_source(folder), num_groups=2, vectors_per_group=3)
    seen = {}
    lm = enc.language_model
    lm.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    with torch.no_grad():
        enc(TEXTS[:1])
    emb, attn = seen["inputs_embeds"], seen["attention_mask"]
    tok = enc.__dict__["_tokenizer"]
    ids = tok(TEXTS[0])["input_ids"]
    table = lm.get_input_embeddings().weight
    assert emb.shape[0] == 2 and int(attn[0].sum()) == len(ids) + 3 + 1
    for n in range(2):
        assert torch.allclose(emb[n, 0], table[ids[0]])                      # first special token
        assert torch.allclose(emb[n, 1:4], enc.scaled_prompt_vectors()[n])    # group n's vectors
        assert torch.allclose(emb[n, 4:4 + len(ids) - 1], table[ids[1:]])      # the text
        assert torch.allclose(emb[n, len(ids) + 3], enc.scaled_seg_embedding())  # [SEG] last


def test_groups_are_independent_and_padding_does_not_leak(tiny_bert):
    torch.manual_seed(0)
    enc = TextPromptTuning(TextModelSpec.from_source(tiny_bert), num_groups=3, vectors_per_group=4)
    enc.calibrate(TEXTS + ["Left.", "Right."])
    enc.eval()  # running statistics fixed
    with torch.no_grad():
        batch = enc(TEXTS)
        alone = enc(TEXTS[:1])
        assert torch.allclose(batch[0], alone[0], atol=1e-5)   # the longer text's padding partner changes nothing
        assert not torch.allclose(batch[0], batch[1])          # the text matters
        enc.prompt_vectors[1] += torch.randn_like(enc.prompt_vectors[1])  # (a constant shift would vanish in BERT's LayerNorm)
        changed = enc(TEXTS)
    assert torch.allclose(changed[:, 0], batch[:, 0], atol=1e-5) and torch.allclose(changed[:, 2], batch[:, 2], atol=1e-5)
    assert not torch.allclose(changed[:, 1], batch[:, 1])


def test_token_readout_reads_the_texts_own_tokens_and_ignores_padding(tiny_bert):
    torch.manual_seed(0)
    enc = TextPromptTuning(TextModelSpec.from_source(tiny_bert), num_groups=2, vectors_per_group=3, text_readout=2)
    enc.calibrate(TEXTS + ["Left.", "Right."])
    enc.eval()
    with torch.no_grad():
        batch = enc(TEXTS)
        assert batch.shape == (2, 2 + 2, 32)                    # N [SEG] outputs, then the read-out ones
        assert torch.allclose(batch[0], enc(TEXTS[:1])[0], atol=1e-5)  # the longer partner's padding is masked
        # one word of the text ("Left" -> "Right") changes the read-out
        one_word = enc(["Right-sided tumour, cT2N1M0.", TEXTS[1]])
        assert not torch.allclose(one_word[0, 2:], batch[0, 2:])
    enc.train()
    enc(TEXTS).square().sum().backward()
    assert enc.readout.queries.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.readout.attention.parameters())
    legacy = ClinicalContextConfig.from_dict({"kind": "language_model", "num_groups": 4, "vectors_per_group": 8,
                                              "category_dim": 128, "text_model": None})
    assert legacy.text_readout == 0 and ClinicalContextConfig().text_readout == 0


def test_standardization_turns_case_to_case_variation_into_the_signal():
    enc = TextPromptTuning(TextModelSpec.from_source(DEFAULT_MODEL), num_groups=2, vectors_per_group=2)
    texts = [f"{s}-sided tumour, cT{t}N{n}M0." for s in ("Left", "Right") for t in (1, 2) for n in (0, 1)]
    raw = enc.encode(texts).detach()
    assert ((raw - raw.mean(0)).norm() / raw.norm()) < 0.2   # the shared wording dominates the raw embeddings
    enc.calibrate(texts)
    enc.eval()
    with torch.no_grad():
        std = enc(texts)
    assert torch.allclose(std.mean(0), torch.zeros_like(std[0]), atol=1e-4)
    assert torch.allclose(std.var(0, unbiased=False).mean(), torch.tensor(1.0), atol=0.05)
    # training batches move the running statistics; evaluation does not
    before = enc.standardize.running_mean.clone()
    enc.train()
    enc(texts[:2])
    assert not torch.equal(before, enc.standardize.running_mean)


def test_default_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(ENV_VAR, raising=False)
    spec = TextModelSpec.from_environment()
    assert (spec.source, spec.model_type, spec.hidden_size) == (DEFAULT_MODEL, "bert", 384)
    enc = TextPromptTuning(spec, num_groups=2, vectors_per_group=2)
    with torch.no_grad():
        left, right = enc.encode(["Left-sided tumour.", "Right-sided tumour."])
    assert left.shape == (2, 384) and not torch.allclose(left, right)


def test_moved_text_model_is_found_again_and_another_model_refused(tiny_bert, tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    spec = TextModelSpec.from_source(tiny_bert)
    assert spec.relocated() == spec
    moved = shutil.copytree(tiny_bert, tmp_path / "moved")
    gone = TextModelSpec(str(tmp_path / "nowhere"), spec.model_type, spec.hidden_size, spec.vocab_size)
    with pytest.raises(TextModelError, match=ENV_VAR):
        gone.relocated()
    monkeypatch.setenv(ENV_VAR, str(moved))
    assert gone.relocated().source == os.path.abspath(moved)
    monkeypatch.setenv(ENV_VAR, tiny_gpt2)
    with pytest.raises(TextModelError, match="gpt2"):
        gone.relocated()


def test_config_round_trip(tiny_bert):
    import json
    cfg = ClinicalContextConfig(num_groups=2, text_model=TextModelSpec.from_source(tiny_bert))
    assert ClinicalContextConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_category_encoding_one_token_per_field():
    enc = CategoryEncoding(context_dim=8)
    a, b, c = enc([{"laterality": "left", "N": "N1"}, {"laterality": "right", "N": "N1"}, {"N": "N1", "laterality": "left"}])
    assert a.shape == (2, 8)
    assert torch.equal(a, c)                      # field order does not matter
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])  # fields sorted: N, laterality


@pytest.mark.parametrize("spatial", [(6, 8, 10), (12, 9)])
def test_fusion_updates_features_from_the_context(spatial):
    torch.manual_seed(0)
    fuse = TwoWayTextFusion(context_dim=16, channels=8, spatial_dims=len(spatial))
    x = torch.randn(2, 8, *spatial)
    ctx = torch.randn(2, 3, 16)
    y = fuse(x, ctx)
    assert y.shape == x.shape
    y2 = fuse(x, ctx.flip(0))
    assert not torch.allclose(y[0], y2[0]) and not torch.allclose(y[1], y2[1])
    y.square().sum().backward()
    assert all(p.grad is not None for p in fuse.parameters())


@pytest.mark.parametrize("kind,arch", [("language_model", "PlainConvUNet"), ("categories", "ResidualEncoderUNet")])
def test_every_trainable_parameter_gets_a_gradient(kind, arch, tiny_bert):
    """DDP (-num_gpus) wraps the network without find_unused_parameters: nothing may be left out. Both
    U-Net families nnU-Net plans (plain and residual encoder) are composed, not forked."""
    from dynamic_network_architectures.architectures import unet as dna
    from nnunet_prompt.text.text_unet import TextConditionedUNet
    per_stage = 1 if arch == "PlainConvUNet" else [1, 1, 1]
    unet = getattr(dna, arch)(1, 3, [4, 8, 16], torch.nn.Conv3d, 3, [1, 2, 2], per_stage, 3, [1, 1], True,
                              torch.nn.InstanceNorm3d, {"affine": True}, nonlin=torch.nn.LeakyReLU, deep_supervision=True)
    cfg = ClinicalContextConfig(kind=kind, num_groups=2, vectors_per_group=2, category_dim=8,
                                text_model=TextModelSpec.from_source(tiny_bert) if kind == "language_model" else None)
    net = TextConditionedUNet(unet, cfg.build_encoder(), cfg.entry_key)
    with net.conditioned_on([{"text": TEXTS[0], "fields": {"laterality": "left", "N": "N1"}},
                             {"text": TEXTS[1], "fields": {"laterality": "right", "N": "N0"}}]):
        sum(o.square().mean() for o in net(torch.randn(2, 1, 8, 16, 16))).backward()
    with pytest.raises(RuntimeError, match="conditioned_on"):  # outside the block the network holds no context
        net(torch.randn(2, 1, 8, 16, 16))
    missing = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing

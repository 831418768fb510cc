"""DDP (issue 15): real multi-process training on CPU (two processes, gloo; see ddp_harness for what is adapted
from nnU-Net's -num_gpus code path), the text standardisation over the global batch, per-rank random streams."""
import os

import pytest
import torch

import ddp_harness
from conftest import CONFIG, DATASET_ID, PLANS


def test_standardization_statistics_come_from_the_global_batch(tmp_path):
    """Two ranks with one case each (nnU-Net's batch of 2 on 2 GPUs), and ranks with unequal batches: every rank
    ends with the statistics a single process computes over the concatenated batch."""
    from nnunet_prompt.text.standardization import RunningStandardization
    torch.manual_seed(0)
    for sizes in ((1, 1), (2, 1)):
        batches = [torch.randn(b, 2, 5) * 3 + 1 for b in sizes]
        ddp_harness.spawn(ddp_harness.standardization_worker, 2, batches, str(tmp_path))
        single = RunningStandardization(2, 5).train()
        whole = torch.cat(batches)
        first = single(whole)
        single(whole + 1)
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}.pt")
            assert int(got["state"]["num_updates"]) == 2, "one case per rank must still update the statistics"
            for k in ("running_mean", "running_var"):
                assert torch.allclose(got["state"][k], single.state_dict()[k], atol=1e-5), (sizes, k)
            lo = sum(sizes[:rank])
            assert torch.allclose(got["first"], first[lo:lo + sizes[rank]], atol=1e-4)


def test_single_process_standardization_is_unchanged():
    """Without torch.distributed: one case does not update, two cases do (mean / population variance)."""
    from nnunet_prompt.text.standardization import RunningStandardization
    std = RunningStandardization(1, 3).train()
    std(torch.ones(1, 1, 3))
    assert int(std.num_updates) == 0
    x = torch.tensor([[[0., 1, 2]], [[2., 3, 6]]])
    std(x)
    assert int(std.num_updates) == 1
    assert torch.equal(std.running_mean, x.mean(0)) and torch.equal(std.running_var, x.var(0, unbiased=False))


def _ddp_train(dataset_id, trainer, tmp_path, steps):
    ddp_harness.spawn(ddp_harness.training_worker, 2, dataset_id, CONFIG, trainer, PLANS, steps, str(tmp_path))
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _check_ranks_agree(results, ckpt_path):
    r0, r1 = results
    assert r0["batch_size"] == r1["batch_size"] == 1, "nnU-Net splits the batch of 2 over the 2 ranks"
    assert r0["keys"] != r1["keys"] or r0["losses"] != r1["losses"], "the ranks trained on different cases"
    assert r0["initial"].keys() == r0["weights"].keys()
    moved = [k for k in r0["weights"] if not torch.equal(r0["initial"][k], r0["weights"][k])]
    assert moved, "training changed the weights"
    differ = [k for k in r0["weights"] if not torch.equal(r0["weights"][k], r1["weights"][k])]
    assert not differ, f"ranks' weights differ after DDP steps: {differ[:5]}"
    # one random stream per rank, and the checkpoint (written by rank 0) holds both ranks' states
    from nnunet_prompt.training.recorded_trainer import RNG_KEY
    assert r0["rng"].keys() == r1["rng"].keys()
    assert all(not torch.equal(r0["rng"][k], r1["rng"][k]) for k in r0["rng"])
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert len(ckpt[RNG_KEY]) == 2
    for rank, r in enumerate(results):
        assert all(torch.equal(ckpt[RNG_KEY][rank][k][1], r["rng"][k]) for k in r["rng"])
    assert all(torch.equal(ckpt["network_weights"][k], v) for k, v in r0["weights"].items())


def test_prompt_trainer_trains_under_two_process_ddp(planned_dataset, tmp_path, monkeypatch):
    """PromptTrainer_demo (up to 2 interaction rounds, so the ranks run different numbers of refinement passes),
    3 DDP train steps on its own data loader's batches: the ranks' weights stay identical, each rank has its own
    simulator stream, and new trainers that load the checkpoint (as --c does) continue each rank's stream."""
    for k, v in planned_dataset["env"].items():
        monkeypatch.setenv(k, v)
    results = _ddp_train(DATASET_ID, "PromptTrainer_demo", tmp_path, 3)
    _check_ranks_agree(results, tmp_path / "checkpoint_ddp.pth")
    assert results[0]["rng"].keys() == {"simulator"}
    # --c under DDP: every rank continues its own stream
    ddp_harness.spawn(ddp_harness.resume_worker, 2, DATASET_ID, CONFIG, "PromptTrainer_demo", PLANS,
                      str(tmp_path / "checkpoint_ddp.pth"), str(tmp_path))
    for rank in range(2):
        resumed = torch.load(tmp_path / f"resumed{rank}.pt", weights_only=False)
        assert torch.equal(resumed["rng"]["simulator"], results[rank]["rng"]["simulator"]), rank
        assert all(torch.equal(resumed["weights"][k], v) for k, v in results[0]["weights"].items())


def test_text_prompt_trainer_trains_under_two_process_ddp(text_dataset, tiny_bert, tmp_path, monkeypatch):
    """TextPromptTrainer_demo with the tiny BERT, 2 DDP train steps with one case per rank: the weights and the
    standardisation statistics (updated from the global batch of 2) stay identical on both ranks."""
    for k, v in text_dataset["env"].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("NNUNET_PROMPT_TEXT_MODEL", tiny_bert)
    results = _ddp_train(text_dataset["id"], "TextPromptTrainer_demo", tmp_path, 2)
    _check_ranks_agree(results, tmp_path / "checkpoint_ddp.pth")
    for r in results:  # calibrated (1) + one update per step, although every rank holds a single case
        assert int(r["weights"]["context_encoder.standardize.num_updates"]) == 3
    assert not torch.equal(results[0]["initial"]["context_encoder.standardize.running_mean"],
                           results[0]["weights"]["context_encoder.standardize.running_mean"])

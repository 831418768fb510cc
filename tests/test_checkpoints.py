"""Checkpoints of nnunet-prompt's trainers (issue 15): the random streams continue after `--c`, writes are atomic,
and a truncated checkpoint given to `--c` gives one clear message and falls back to another checkpoint of the fold."""
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import CONFIG, PLANS, run


def _psap_trainer(planned_dataset, name="PSAPTrainer_CPP"):
    from nnunetv2.utilities.file_path_utilities import load_json
    import nnunet_prompt_trainers.PSAPTrainer as module
    pre = os.path.join(planned_dataset["env"]["nnUNet_preprocessed"], planned_dataset["name"])
    return getattr(module, name)(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=False), CONFIG, 0,
                                 load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))


@pytest.fixture(scope="module")
def stepped(planned_dataset, tmp_path_factory):
    """PSAPTrainer_CPP (simulated user + cross-patch pair sampling) after one train step, and its checkpoint."""
    # data augmentation in this process, for the fixture only: nnU-Net's planner (other tests, in-process) reads
    # the same variable and fails on 0 (torch.set_num_threads(0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_n_proc_DA", "0")
        trainer = _psap_trainer(planned_dataset)
        trainer.initialize()
        dl_train, _ = trainer.get_dataloaders()
        trainer.network.train()
        trainer.train_step(next(dl_train))
    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint_latest.pth")
    trainer.save_checkpoint(path)
    return trainer, path


def test_random_streams_continue_after_load_checkpoint(stepped, planned_dataset):
    """The number drawn from each generator right after the save equals the one a new trainer draws right after
    load_checkpoint (what `nnUNetv2_train --c` calls); a fresh trainer (seeded) draws another."""
    trainer, path = stepped
    gens = trainer.random_generators()
    assert gens.keys() == {"simulator", "pair_sampling"}
    assert gens["simulator"].initial_seed() == trainer.simulation_seed + 0  # rank 0, fold 0: the seed as before
    after_save = {k: torch.rand(4, generator=g) for k, g in gens.items()}
    resumed = _psap_trainer(planned_dataset)
    resumed.load_checkpoint(path)
    after_load = {k: torch.rand(4, generator=g) for k, g in resumed.random_generators().items()}
    fresh = {k: torch.rand(4, generator=g) for k, g in _psap_trainer(planned_dataset).random_generators().items()}
    for k in after_save:
        assert torch.equal(after_save[k], after_load[k]), k
        assert not torch.equal(fresh[k], after_load[k]), f"{k}: the saved state is not just the seed"


def test_checkpoint_keeps_nnunets_keys(stepped, tmp_path):
    """save_checkpoint builds nnU-Net 2.8's checkpoint dict itself (to add the generator states): the same keys and
    weights as nnUNetTrainer.save_checkpoint writes, plus ours."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_prompt.training.recorded_trainer import RNG_KEY
    trainer, path = stepped
    theirs = str(tmp_path / "nnunet.pth")
    nnUNetTrainer.save_checkpoint(trainer, theirs)
    ours, ref = torch.load(path, weights_only=False), torch.load(theirs, weights_only=False)
    assert set(ours) == set(ref) | {RNG_KEY}
    assert ours["network_weights"].keys() == ref["network_weights"].keys()
    assert all(torch.equal(ours["network_weights"][k], v) for k, v in ref["network_weights"].items())


def test_an_interrupted_write_leaves_the_previous_checkpoint(stepped, monkeypatch):
    trainer, path = stepped
    before = open(path, "rb").read()

    def interrupted(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(path)
    assert open(path, "rb").read() == before
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)], "no temporary file left behind"


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])


def test_c_with_a_truncated_checkpoint_falls_back_or_stops_clearly(trained, tmp_path):
    """A training killed while writing checkpoint_latest.pth (a checkpoint written in place by plain nnU-Net, or a
    damaged disk): `nnUNetv2_train --c` names the file once and continues from checkpoint_best.pth; with no
    loadable checkpoint at all it stops with that message instead of a bare unpickling traceback."""
    results = tmp_path / "results"
    rel = os.path.relpath(trained["folder"], trained["env"]["nnUNet_results"])
    shutil.copytree(trained["folder"], results / rel)
    fold = results / rel / "fold_0"
    best = torch.load(fold / "checkpoint_best.pth", weights_only=False)
    shutil.copy(fold / "checkpoint_final.pth", fold / "checkpoint_latest.pth")
    os.remove(fold / "checkpoint_final.pth")  # killed before the end of training
    _truncate(fold / "checkpoint_latest.pth")
    env = dict(trained["env"], nnUNet_results=str(results), NNUNET_PROMPT_DEMO_EPOCHS="2", NNUNET_PROMPT_DEMO_ITERS="2")
    proc = run(trained["cmd"] + ["--c"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    latest, best_path = str(fold / "checkpoint_latest.pth"), str(fold / "checkpoint_best.pth")
    assert proc.stdout.count(f"Checkpoint {latest} does not load") == 1, proc.stdout[-5000:]
    assert f"Continuing from {best_path} instead." in proc.stdout
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 2 and best["current_epoch"] == 1
    assert f"Epoch {best['current_epoch']}" in proc.stdout and "Epoch 0\n" not in proc.stdout

    os.remove(fold / "checkpoint_final.pth")
    shutil.copy(best_path, latest)
    _truncate(latest)
    _truncate(best_path)
    proc = run(trained["cmd"] + ["--c"], env)
    assert proc.returncode != 0
    tail = proc.stdout[-3000:]
    assert "CheckpointLoadError" in tail and f"Checkpoint {latest} does not load" in tail
    assert f"Checkpoint {best_path} does not load" in tail and "No checkpoint of this fold loads" in tail


def test_without_c_a_damaged_checkpoint_is_an_error_naming_it(stepped, planned_dataset, tmp_path):
    """--val, --val_best and direct loads never switch to another checkpoint: one error that names the file."""
    from nnunet_prompt.training.recorded_trainer import CheckpointLoadError
    _, path = stepped
    damaged = tmp_path / "checkpoint_final.pth"
    shutil.copy(path, damaged)
    shutil.copy(path, tmp_path / "checkpoint_best.pth")
    _truncate(damaged)
    with pytest.raises(CheckpointLoadError, match=f"Checkpoint {damaged} does not load") as info:
        _psap_trainer(planned_dataset).load_checkpoint(str(damaged))
    assert "checkpoint_best" not in str(info.value)

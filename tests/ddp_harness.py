"""Real multi-process DDP on CPU for the tests: torch.multiprocessing spawn, the gloo backend, nnU-Net's trainer.

``nnUNetv2_train -num_gpus N`` (nnunetv2.run.run_training.run_ddp) does: init_process_group('nccl'), the trainer
built by ``get_trainer_from_args`` (which sets ``is_ddp``, the per-rank batch and the DDP loss weights), and
``initialize`` wraps the network in ``DDP(network, device_ids=[local_rank])``. Here only the device and the
backend choice differ, because there is no GPU: the backend is gloo, the trainer's device is set to the CPU after
construction (nnU-Net forces cuda:<rank> under DDP) and the DDP wrapper is built without ``device_ids`` (a CPU
module takes none). Everything else (trainer lookup by name, batch split, loss, train_step, DDP's gradient
all-reduce and its unused-parameter check) is nnU-Net's and torch's own code.

Workers write their results with torch.save to ``out_dir/rank{r}.pt``; the test compares them.
"""
import datetime
import os
import socket

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ddp_trainer(dataset_id, configuration, trainer_name, plans, continue_training=False):
    """nnU-Net's get_trainer_from_args under an initialised gloo group, moved to the CPU (see module doc)."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
    from torch.nn.parallel import DistributedDataParallel
    from nnunetv2.run.run_training import get_trainer_from_args

    def cpu_ddp(module, device_ids=None, **kwargs):  # nnU-Net passes device_ids=[local_rank]: CUDA only
        return DistributedDataParallel(module, **kwargs)

    nnunet_trainer_module.DDP = cpu_ddp  # this worker process only
    trainer = get_trainer_from_args(str(dataset_id), configuration, 0, trainer_name, plans, continue_training)
    assert trainer.is_ddp
    trainer.device = torch.device("cpu")
    trainer.grad_scaler = None  # nnU-Net creates a CUDA GradScaler for its cuda device
    return trainer


def weights_of(network) -> dict:
    from nnunet_prompt.networks.contract import unwrap
    return {k: v.detach().clone() for k, v in unwrap(network).state_dict().items()}


def spawn(fn, world_size: int, *args):
    """Run fn(rank, world_size, *args) in world_size processes with a gloo group on a free loopback port."""
    import torch.multiprocessing as mp
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    mp.spawn(_entry, args=(fn, world_size, args), nprocs=world_size, join=True)


def _entry(rank, fn, world_size, args):
    import torch.distributed as dist
    torch.set_num_threads(1)  # 2 cores, 2 ranks
    # a mismatched collective (one rank waiting in a broadcast the other never starts) fails instead of hanging
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=90))
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- workers
def standardization_worker(rank, world_size, batches, out_dir):
    """One training forward of RunningStandardization per rank on this rank's batch."""
    from nnunet_prompt.text.standardization import RunningStandardization
    std = RunningStandardization(batches[rank].shape[1], batches[rank].shape[2])
    std.train()
    first = std(batches[rank])  # uncalibrated: starts from the global batch
    std(batches[rank] + 1)  # a running update
    torch.save({"state": std.state_dict(), "first": first}, os.path.join(out_dir, f"rank{rank}.pt"))


def training_worker(rank, world_size, dataset_id, configuration, trainer_name, plans, steps, out_dir):
    """A few nnU-Net train_steps of a trainer on batches of its own data loader under DDP, then a checkpoint."""
    from nnunet_prompt.networks.contract import unwrap
    trainer = cpu_ddp_trainer(dataset_id, configuration, trainer_name, plans)
    trainer.initialize()
    initial = weights_of(trainer.network)
    encoder = getattr(unwrap(trainer.network), "context_encoder", None)
    if encoder is not None and getattr(encoder, "standardize", None) is not None:
        # what TextPromptTrainerBase.on_train_start does (its other work, data unpacking and plots, is not needed)
        tr_keys, _ = trainer.do_split()
        encoder.calibrate(sorted({trainer.entry(k)["text"] for k in tr_keys}))
    dl_train, _ = trainer.get_dataloaders()
    trainer.network.train()
    losses, keys = [], []
    for _ in range(steps):
        batch = next(dl_train)
        keys.append(list(batch["keys"]))
        losses.append(float(trainer.train_step(batch)["loss"]))
    rng = {name: g.get_state() for name, g in trainer.random_generators().items()}
    ckpt = os.path.join(out_dir, "checkpoint_ddp.pth")
    trainer.save_checkpoint(ckpt)  # all ranks call it (a gather inside); rank 0 writes
    torch.save({"initial": initial, "weights": weights_of(trainer.network), "losses": losses, "keys": keys,
                "rng": rng, "batch_size": trainer.batch_size}, os.path.join(out_dir, f"rank{rank}.pt"))


# ------------------------------------------------------------- one rank's step, in this process
def as_one_rank_of_two(trainer):
    """What a rank of ``nnUNetv2_train -num_gpus 2`` differs in, for an initialised single-process trainer: one case
    per batch (nnU-Net splits the default batch of 2) and the deep-supervision weights of nnU-Net's DDP loss (its
    lowest head weighs 1e-6 instead of 0: a head left out of the loss would be an unused parameter)."""
    import numpy as np
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    trainer.batch_size = 1
    for m in trainer.loss.modules():
        if isinstance(m, DeepSupervisionWrapper):
            w = np.array([1 / 2 ** i for i in range(len(m.weight_factors))])
            w[-1] = 1e-6
            m.weight_factors = tuple(w / w.sum())
    return trainer


def parameters_without_gradient(network) -> list:
    """Trainable parameters the last backward pass did not reach: DDP without find_unused_parameters fails on them."""
    return [n for n, p in network.named_parameters() if p.requires_grad and p.grad is None]


def prompt_modes(trainer):
    """(initial prompt type, rounds, empty target) combinations a prompt trainer's policy can produce in a step."""
    rounds = sorted({1, trainer.simulation_policy.num_rounds})
    return [(kind, r, False) for kind in trainer.simulation_policy.initial_types for r in rounds] + \
        [(trainer.simulation_policy.initial_types[0], 1, True)]


def prompted_step(trainer, batch, kind, rounds, empty):
    """The trainer's own train_step with the simulated user fixed to one prompt type and number of rounds; ``empty``:
    a patch without any target (the sample gets no prompt at all)."""
    import dataclasses
    trainer.simulator.policy = dataclasses.replace(trainer.simulator.policy, initial_types=(kind,))
    trainer.draw_rounds = lambda: rounds
    if empty:
        t = batch["target"]
        batch = dict(batch, target=[torch.zeros_like(x) for x in t] if isinstance(t, list) else torch.zeros_like(t))
    try:
        return trainer.train_step(batch)
    finally:
        del trainer.draw_rounds
        trainer.simulator.policy = trainer.simulation_policy


def resume_worker(rank, world_size, dataset_id, configuration, trainer_name, plans, checkpoint, out_dir):
    """A new trainer per rank loads a DDP checkpoint (what --c does) and reports its generators' states."""
    trainer = cpu_ddp_trainer(dataset_id, configuration, trainer_name, plans, continue_training=True)
    trainer.load_checkpoint(checkpoint)
    torch.save({"rng": {name: g.get_state() for name, g in trainer.random_generators().items()},
                "weights": weights_of(trainer.network)}, os.path.join(out_dir, f"resumed{rank}.pt"))

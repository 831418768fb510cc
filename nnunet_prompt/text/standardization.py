"""Standardisation of context embeddings with running statistics over the training cases.

A frozen language model gives texts that differ in one word ("left" / "right") [SEG] embeddings that
differ by only ~5% (measured with MiniLM-L6): the shared wording dominates. Fed as they are, that
difference is too faint for the image network to pick up in a short training. Subtracting the running
mean over training cases and dividing by the running standard deviation (per prompt group and
dimension, BatchNorm's running statistics, but used in training too, because nnU-Net's batches hold two
cases) turns exactly the case-to-case variation into the signal. The statistics are buffers, so they
are saved in checkpoints and used unchanged at inference.

Under DDP (``nnUNetv2_train -num_gpus N``) nnU-Net splits the batch across ranks: with the default batch of
2 on 2 GPUs every rank holds one case, whose own variance is 0. The batch statistics are therefore reduced
over the *global* batch (SyncBatchNorm's choice), which gives every rank the same statistics, and rank 0's
buffers, which DDP broadcasts before every forward pass, stay the ones all ranks computed.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_batch_moments(x: torch.Tensor) -> Tuple[int, torch.Tensor, torch.Tensor]:
    """(number of cases, mean, population variance) of x (B, ...) over dim 0 of the global batch: all ranks'
    batches under torch.distributed (one all_reduce of count, sum and sum of squares, in float64 against
    cancellation; batches may differ in size between ranks), this batch alone otherwise."""
    if not _distributed():
        x = x.float()
        return x.shape[0], x.mean(0), x.var(0, unbiased=False)
    x = x.double()
    packed = torch.cat([torch.full((1,), float(x.shape[0]), dtype=torch.float64, device=x.device),
                        x.sum(0).flatten(), x.square().sum(0).flatten()])
    dist.all_reduce(packed)
    n = int(round(packed[0].item()))
    s, ss = packed[1:].chunk(2)
    mean = s / max(n, 1)
    var = (ss / max(n, 1) - mean.square()).clamp_min(0)
    return n, mean.view(x.shape[1:]).float(), var.view(x.shape[1:]).float()


class RunningStandardization(nn.Module):
    def __init__(self, num_tokens: int, dim: int, momentum: float = 0.05, eps: float = 1e-6):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_tokens, dim))
        self.register_buffer("running_var", torch.ones(num_tokens, dim))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def reset_from(self, x: torch.Tensor) -> None:
        self.running_mean.copy_(x.float().mean(0))
        self.running_var.copy_(x.float().var(0, unbiased=False))
        self.num_updates.fill_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D), standardised per token position and dimension."""
        if self.training:
            # every rank calls this in every training forward pass, so the collective inside is matched
            with torch.no_grad():
                n, mean, var = global_batch_moments(x.detach())
                if n > 1:  # one case has no case-to-case variation to measure
                    if int(self.num_updates) == 0:  # not calibrated on the training texts: start from this batch
                        self.running_mean.copy_(mean)
                        self.running_var.copy_(var)
                        self.num_updates.fill_(1)
                    else:  # follow the embeddings as the prompt vectors train
                        self.running_mean.lerp_(mean, self.momentum)
                        self.running_var.lerp_(var, self.momentum)
                        self.num_updates += 1
        return (x - self.running_mean.to(x.dtype)) / torch.sqrt(self.running_var.to(x.dtype) + self.eps)

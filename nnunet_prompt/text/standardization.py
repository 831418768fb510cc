"""Standardisation of context embeddings with running statistics over the training cases.

A frozen language model gives texts that differ in one word ("left" / "right") [SEG] embeddings that
differ by only ~5% (measured with MiniLM-L6): the shared wording dominates. Fed as they are, that
difference is too faint for the image network to pick up in a short training. Subtracting the running
mean over training cases and dividing by the running standard deviation (per prompt group and
dimension, BatchNorm's running statistics, but used in training too, because nnU-Net's batches hold two
cases) turns exactly the case-to-case variation into the signal. The statistics are buffers, so they
are saved in checkpoints and used unchanged at inference.
"""
from __future__ import annotations

import torch
from torch import nn


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
        if self.training and x.shape[0] > 1:
            if int(self.num_updates) == 0:  # not calibrated on the training texts: start from this batch
                self.reset_from(x.detach())
            else:
                with torch.no_grad():  # follow the embeddings as the prompt vectors train
                    self.running_mean.lerp_(x.detach().float().mean(0), self.momentum)
                    self.running_var.lerp_(x.detach().float().var(0, unbiased=False), self.momentum)
                    self.num_updates += 1
        return (x - self.running_mean.to(x.dtype)) / torch.sqrt(self.running_var.to(x.dtype) + self.eps)

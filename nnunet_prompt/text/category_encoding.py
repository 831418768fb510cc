"""The numeric-category ablation of LLMSeg (Table 3a): the same clinical fields as categories, no language.

Each structured field of the clinical-text sidecar ("laterality": "left", "N": "N1", ...) becomes one
context token: a learned embedding of the pair "field=value". Pairs are mapped to embedding rows by a
stable hash (CRC32) into ``num_buckets`` rows, so no vocabulary has to be collected before the network
is built and stored beside it; with a few dozen distinct pairs and 1024 rows a collision is unlikely,
and a value never seen in training simply maps to an untrained row. Fields are ordered by name; cases
with fewer fields are padded with row 0, which no pair uses.
"""
from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import torch
from torch import nn


class CategoryEncoding(nn.Module):
    def __init__(self, context_dim: int = 128, num_buckets: int = 1024):
        super().__init__()
        self.context_dim = int(context_dim)
        self.num_buckets = int(num_buckets)
        self.embedding = nn.Embedding(self.num_buckets, self.context_dim)

    def bucket(self, field: str, value) -> int:
        return 1 + zlib.crc32(f"{field}={value}".encode("utf-8")) % (self.num_buckets - 1)

    def forward(self, fields: Sequence[Mapping[str, object]]) -> torch.Tensor:
        """fields: one {field: value} dict per sample -> (B, F, D) with F the largest field count."""
        rows = [[self.bucket(k, f[k]) for k in sorted(f)] for f in fields]
        width = max(1, max(len(r) for r in rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long, device=self.embedding.weight.device)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        return self.embedding(ids)

"""LoRA on the query and value projections of SAM's image encoder (SAM-RT §2.1), and SeqLoRA (§2.2).

transformers' SAM attention projects queries, keys and values with one fused ``qkv`` Linear, and peft adapts
whole modules: LoRA on ``qkv`` would adapt the keys as well. ``split_qkv`` therefore replaces every ``qkv`` by
``SplitQKV``, three Linear layers ``query``/``key``/``value`` holding the fused layer's weight rows (copied, so
the output is identical), and peft's ``LoraConfig(target_modules=["query", "value"])`` then finds exactly
the two projections SAM-RT adapts.

SeqLoRA: stage 1's adapter (``STAGE1``) is frozen, a second peft adapter (``STAGE2``) is added to the same
layers and both are active, so peft's LoRA layers compute W x + s·B1 A1 x + s·B2 A2 x. peft's per-adapter
``scaling`` is a float, not a parameter, so the learnable alpha and beta of SAM-RT's
Q'' = XW + alpha·X A1 B1 + beta·X A2 B2 are the one hand-written piece: forward hooks on each adapter's
``lora_B`` multiply its output by a shared learnable scalar (``SeqLoRAWeights``).
"""
from __future__ import annotations

import warnings
from typing import Iterable, List

import torch
from torch import nn
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

STAGE1 = "stage1"  # the adapter every SAM LoRA model has (SAM-RT's first stage)
STAGE2 = "stage2"  # SeqLoRA's added adapter
LORA_TARGETS = ("query", "value")


class SplitQKV(nn.Module):
    """Drop-in for a fused qkv Linear: concatenates separate query, key and value projections."""

    def __init__(self, fused: nn.Linear):
        super().__init__()
        dim = fused.out_features // 3
        bias = fused.bias is not None
        self.query, self.key, self.value = (nn.Linear(fused.in_features, dim, bias=bias) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.query, self.key, self.value)):
                lin.weight.copy_(fused.weight[i * dim:(i + 1) * dim])
                if bias:
                    lin.bias.copy_(fused.bias[i * dim:(i + 1) * dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the attention reshapes this as (..., 3, heads, head_dim): the same layout as the fused layer's output
        return torch.cat([self.query(x), self.key(x), self.value(x)], dim=-1)


def split_qkv(encoder: nn.Module) -> int:
    """Replace every ``attn.qkv`` Linear of a SAM vision encoder by SplitQKV; returns how many were split."""
    n = 0
    for layer in encoder.layers:
        if isinstance(layer.attn.qkv, nn.Linear):
            layer.attn.qkv = SplitQKV(layer.attn.qkv)
            n += 1
    return n


def lora_config(rank: int) -> LoraConfig:
    # lora_alpha = rank: scaling 1, so SeqLoRA's alpha/beta are the only weights on the two adapters
    return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS), bias="none")


def add_lora(encoder: nn.Module, rank: int, adapter: str = STAGE1) -> None:
    """Inject a LoRA adapter on query and value of every block (the encoder must have been split)."""
    with warnings.catch_warnings():
        # peft warns that a second adapter makes a multi-adapter model: for SeqLoRA that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(lora_config(rank), encoder, adapter_name=adapter)


def lora_layers(encoder: nn.Module) -> List[LoraLayer]:
    return [m for m in encoder.modules() if isinstance(m, LoraLayer)]


def freeze_base(encoder: nn.Module, trainable_adapters: Iterable[str]) -> None:
    """Everything in the encoder frozen except the LoRA matrices of ``trainable_adapters``."""
    trainable = set(trainable_adapters)
    for name, p in encoder.named_parameters():
        p.requires_grad = any(f".lora_A.{a}." in name or f".lora_B.{a}." in name for a in trainable)


class SeqLoRAWeights(nn.Module):
    """SeqLoRA's learnable alpha (stage-1 adapter) and beta (stage-2 adapter), both starting at 1."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.ones(()))

    def attach(self, encoder: nn.Module) -> None:
        """Activate both adapters on every LoRA layer and weight their outputs by alpha and beta."""
        for layer in lora_layers(encoder):
            layer.set_adapter([STAGE1, STAGE2])
            layer.lora_B[STAGE1].register_forward_hook(lambda m, i, o: o * self.alpha)
            layer.lora_B[STAGE2].register_forward_hook(lambda m, i, o: o * self.beta)

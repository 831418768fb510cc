"""The prompt-network contract, shared by training and inference (neither imports the other for it).

A prompt network (PromptTrainer, PSAPTrainer, SAM prompt trainers) takes the image channels followed by the
prompt encoding's channels (``nnunet_prompt.prompts.encoding``) and gives ``NUM_OUTPUTS`` outputs: background
and the prompted object (one prompt addresses one target at a time). ``unwrap`` reaches the network itself
through nnU-Net's wrappers (DDP, torch.compile).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

NUM_OUTPUTS = 2  # background, prompted object


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside DDP (``.module``) and torch.compile (``._orig_mod``), in either order."""
    while True:
        if isinstance(network, nn.parallel.DistributedDataParallel):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network


def object_label_manager():
    """Labels of one prompted object: what a prompt network's two outputs mean."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    return LabelManager({"background": 0, "object": 1}, None)


class NoPromptChannelsWarning(UserWarning):
    pass


def append_empty_prompts_hook(num_image_channels: int, num_prompt_channels: int):
    """Forward pre-hook: a network that receives only the image channels (plain ``nnUNetv2_predict``, which
    cannot pass prompts) gets empty prompt channels instead of crashing, with a warning (Python shows it once)."""
    def hook(module, args):
        x = args[0]
        if x.shape[1] != num_image_channels:
            return None
        warnings.warn("this prompt model received no prompt channels (was it called by plain nnUNetv2_predict?). It "
                      "runs with empty prompts and will segment (almost) nothing. Use `nnunet-prompt predict --prompts "
                      "prompts.json` to give prompts.", NoPromptChannelsWarning, stacklevel=2)
        pad = torch.zeros((x.shape[0], num_prompt_channels, *x.shape[2:]), dtype=x.dtype, device=x.device)
        return (torch.cat([x, pad], 1), *args[1:])

    return hook


def used_prompt_channels(record) -> tuple:
    """Names of the prompt channels a model's network reads (``network["prompt_channels_used"]`` of its plans record;
    all channels of its prompt encoding when the record does not say). The others are accepted and ignored."""
    used = record.network.get("prompt_channels_used")
    return tuple(used) if used is not None else tuple((record.prompt_encoding or {}).get("channels", ()))


def select_input_channels_hook(keep):
    """Forward pre-hook: pass only the input channels ``keep`` (indices) to the network, so a model that reads a
    subset of the prompt channels keeps the common input layout (image channels, then all prompt channels)."""
    index = torch.as_tensor(list(keep), dtype=torch.long)

    def hook(module, args):
        x = args[0]
        return (x.index_select(1, index.to(x.device)), *args[1:])

    return hook

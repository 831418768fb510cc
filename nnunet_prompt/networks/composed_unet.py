"""Base of networks that wrap nnU-Net's planned U-Net instead of forking it."""
from torch import nn


class ComposedUNet(nn.Module):
    """Holds the planned U-Net as ``self.unet`` and exposes its encoder and decoder as its own, because
    nnU-Net's trainer reaches into ``network.decoder`` to switch deep supervision on and off."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    @property
    def decoder(self):
        return self.unet.decoder

    @property
    def encoder(self):
        return self.unet.encoder

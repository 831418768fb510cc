"""nnunet-prompt: prompted segmentation as an nnU-Net v2 plugin."""
__version__ = "0.1.0"

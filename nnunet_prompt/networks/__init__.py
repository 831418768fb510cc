"""Prompt-conditioned networks built around nnU-Net's planned U-Nets (composed, not forked)."""

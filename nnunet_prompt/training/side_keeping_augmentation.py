"""Data augmentation that keeps the patient's left and right where they are.

nnU-Net mirrors every axis in training and at inference (test-time augmentation) and, for anisotropic
patches, rotates in-plane by up to 180 degrees. Mirrored along the left-right axis, a case whose text says
"left-sided tumour" shows its tumour on the right, so text that carries laterality would be contradicted
by half the training samples and averaged away by mirrored inference. Models conditioned on such text
therefore train and predict without mirroring, and with rotations limited to the +-30 degrees nnU-Net
uses for isotropic 3D patches.
"""
import numpy as np

from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

MAX_ROTATION = 30. / 360 * 2. * np.pi


class SideKeepingAugmentation:
    """Mix in front of an nnUNetTrainer."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        rotation = (max(rotation[0], -MAX_ROTATION), min(rotation[1], MAX_ROTATION))
        patch_size = self.configuration_manager.patch_size
        dim = len(patch_size)
        initial_patch_size = get_patch_size(patch_size[-dim:], rotation, rotation, rotation, (0.85, 1.25))
        if dummy_2d:
            initial_patch_size[0] = patch_size[0]
        self.inference_allowed_mirroring_axes = None
        self.print_to_log_file("side-keeping augmentation: no mirroring, rotation within +-30 degrees")
        return rotation, dummy_2d, initial_patch_size, None

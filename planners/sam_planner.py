"""SAM2DPlanner: nnU-Net's planning with a 2D configuration that SAM's ViT encoder can take.

nnU-Net's ExperimentPlanner plans as usual (fingerprint, target spacing, 3D configurations untouched); the 2d
configuration gets a square patch of ``patch_edge`` pixels (a multiple of SAM's 16-pixel patch: 512 by
default, ``SAM2DPlanner1024`` for SAM's native 1024, ``SAM2DPlanner64`` for CPU tests and demos) and a batch
size for a ViT rather than for a U-Net. The U-Net part of the 2d plan is nnU-Net's own for that patch, so
plain ``nnUNetTrainer`` trains on exactly the same data as the SAM trainers: the fair baseline.

The position tables of the SAM checkpoint (pretrained at 1024) are interpolated to patch_edge / 16 tokens
when the network is built (``nnunet_prompt.sam.checkpoint``).

Intensities: the preprocessed data keep nnU-Net's normalisation (a plugin cannot add one: nnU-Net 2.8 resolves
normalisation classes by name inside nnunetv2). The SAM network maps them to what its checkpoint expects
(``nnunet_prompt.sam.intensity``): CT back to HU with the plans' statistics and windowed (level 40, width 400),
RGB fusion exports (channel names ``rgb_to_0_1``) as they are; one channel is replicated to RGB.

    nnunet-prompt plan DATASET -pl SAM2DPlanner -c 2d      # writes nnUNetPlansSAM512.json, preprocesses 2d
"""
from typing import List, Tuple, Union

import numpy as np

from nnunet_prompt_planners.shared_preprocessing import SharedPreprocessingPlanner


class SAM2DPlanner(SharedPreprocessingPlanner):
    patch_edge = 512
    sam_batch_size = 4  # ViT-B at 512 px with LoRA: activations of 12 blocks at 32x32 tokens per sample

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = 'DefaultPreprocessor', plans_name: str = None,
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or f'nnUNetPlansSAM{self.patch_edge}', overwrite_target_spacing, suppress_transpose)
        if self.patch_edge % 16:
            raise ValueError(f"{type(self).__name__}.patch_edge must be a multiple of 16, got {self.patch_edge}")

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        if len(spacing) != 2:
            return super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                       approximate_n_voxels_dataset, _cache)
        # nnU-Net clips its initial patch to the median shape: handing it the SAM patch makes that the patch,
        # and its U-Net topology (for the baseline) is planned for exactly this patch
        edge = self.patch_edge
        plan = super().get_plans_for_configuration(spacing, np.array([edge, edge]), data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if list(plan['patch_size']) != [edge, edge]:
            raise RuntimeError(f"nnU-Net planned a {plan['patch_size']} patch instead of {edge}x{edge} (GPU memory "
                               f"target too small for its U-Net?); raise gpu_memory_target_in_gb")
        plan['batch_size'] = self.sam_batch_size
        return plan


class SAM2DPlanner1024(SAM2DPlanner):
    patch_edge = 1024
    sam_batch_size = 2


class SAM2DPlanner64(SAM2DPlanner):
    """64 px patches: CPU tests and quick experiments only (4x4 tokens)."""
    patch_edge = 64
    sam_batch_size = 2

"""Plans for SAMAdapter3DTrainer / DistillTrainer: nnU-Net's default plans with an isotropic 3D patch.

AutoSAM Adapter trains on 128³ patches (§4, with batch size 1); a ViT-B with 16-voxel patches then sees an 8 x 8 x 8
token grid. This planner keeps nnU-Net's spacing, normalisation and preprocessing (the data identifier is the
default one, so the preprocessed data of ``nnUNetPlans`` are shared) and replaces the 3D patch by
``sam_patch_size``³, re-deriving the U-Net topology nnU-Net would plan for that patch (the DistillTrainer
student) with nnU-Net's own ``get_pool_and_conv_props``. Batch size: nnU-Net's minimum of 2.

    nnunet-prompt plan DATASET -pl SAMAdapter3DPlanner        # writes nnUNetPlansSAM3D.json (128³)
    nnunet-prompt plan DATASET -pl SAMAdapter3DPlanner_32     # 32³ and U-Net widths / 4: tests and CPU trials
"""
from typing import List, Tuple, Union

from nnunet_prompt_planners.shared_preprocessing import SharedPreprocessingPlanner
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props


class SAMAdapter3DPlanner(SharedPreprocessingPlanner):
    sam_patch_size = 128
    width_divisor = 1
    default_plans_name = 'nnUNetPlansSAM3D'

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = 'DefaultPreprocessor', plans_name: str = None,
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or self.default_plans_name, overwrite_target_spacing, suppress_transpose)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        if len(spacing) != 3:
            return plan
        _, strides, kernels, patch_size, _ = get_pool_and_conv_props(
            spacing, [self.sam_patch_size] * 3, self.UNet_featuremap_min_edge_length, 999999)
        n = len(strides)
        kwargs = plan['architecture']['arch_kwargs']
        kwargs.update({
            'n_stages': n,
            'features_per_stage': [max(1, min(self.UNet_max_features_3d, self.UNet_base_num_features * 2 ** i)
                                          // self.width_divisor) for i in range(n)],
            'kernel_sizes': kernels,
            'strides': strides,
            'n_conv_per_stage': list(self.UNet_blocks_per_stage_encoder[:n]),
            'n_conv_per_stage_decoder': list(self.UNet_blocks_per_stage_decoder[:n - 1]),
        })
        plan['patch_size'] = [int(p) for p in patch_size]
        plan['batch_size'] = self.UNet_min_batch_size
        return plan


class SAMAdapter3DPlanner_32(SAMAdapter3DPlanner):
    """32³ patches and U-Net widths / 4: small enough for tests and 2-core CPU trials (with a small ViT)."""
    sam_patch_size = 32
    width_divisor = 4
    default_plans_name = 'nnUNetPlansSAM3D_32'

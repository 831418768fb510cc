"""A planner for CPU-sized experiments: nnU-Net's default plans with every feature width divided by 4.

Topology, patch size, spacing and preprocessing are exactly those of nnU-Net's ExperimentPlanner (the
widths are divided *after* default planning), and the data identifier is the default one, so the
narrow plans train on the same preprocessed data as ``nnUNetPlans``. DESIGN.md measured ~0.42 s per
training iteration for a 32x64x64 patch on 2 CPU cores with these plans, against ~3.6 s at full width.
Use it for demos and quick experiments, not for reported results on real data.

    nnunet-prompt plan DATASET -pl NarrowUNetPlanner     # writes nnUNetPlansNarrow.json
"""
from typing import List, Tuple, Union

from nnunet_prompt_planners.shared_preprocessing import SharedPreprocessingPlanner


class NarrowUNetPlanner(SharedPreprocessingPlanner):
    width_divisor = 4

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = 'DefaultPreprocessor', plans_name: str = 'nnUNetPlansNarrow',
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        kwargs = plan['architecture']['arch_kwargs']
        kwargs['features_per_stage'] = [max(1, int(f) // self.width_divisor) for f in kwargs['features_per_stage']]
        return plan


class NarrowSmallPatchPlanner(NarrowUNetPlanner):
    """Narrow plans whose patch is about ``patch_fraction`` of the median image along every axis (the cap before
    nnU-Net rounds the patch up to what its pooling divides: 32 x 16 x 8 on 96 x 48 x 24 volumes).

    On the small phantoms nnU-Net's patch is the whole image; on a CT it is a fraction of the body, and a sliding
    window covers the body with many patches. This planner reproduces that on a phantom (e.g. the wide synthetic
    head-and-neck volumes, ``generate_synthetic_hn_dataset(shape_xyz=(96, 48, 24))``), for what depends on it:
    text models that must know on which side of the patient a patch lies. nnU-Net caps its initial patch by the
    median shape; the cap is lowered here, and nnU-Net's planning then proceeds as always.

        nnunet-prompt plan DATASET -pl NarrowSmallPatchPlanner     # writes nnUNetPlansNarrowSmallPatch.json
    """
    patch_fraction = 1 / 3  # rounded up, still at most half of a body that fills 70 % of the image's width
    max_batch_size = 2  # nnU-Net fills its memory target with more patches when they are small; a CT trains with 2

    def __init__(self, dataset_name_or_id: Union[str, int], gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = 'DefaultPreprocessor', plans_name: str = 'nnUNetPlansNarrowSmallPatch',
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        import numpy as np
        capped = np.maximum(np.floor(np.asarray(median_shape) * self.patch_fraction), 4)
        plan = super().get_plans_for_configuration(spacing, capped, data_identifier, approximate_n_voxels_dataset,
                                                   _cache)
        plan['median_image_size_in_voxels'] = median_shape
        plan['batch_size'] = min(int(plan['batch_size']), self.max_batch_size)
        return plan

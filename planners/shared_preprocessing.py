"""Base for our planners that change the network or the patch, not the preprocessing (spacing, normalisation)."""
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner


class SharedPreprocessingPlanner(ExperimentPlanner):
    def generate_data_identifier(self, configuration_name: str) -> str:
        # the same preprocessing as nnU-Net's default plans: use their preprocessed data instead of a copy
        return 'nnUNetPlans_' + configuration_name

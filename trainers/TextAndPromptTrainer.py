"""TextAndPromptTrainer: one model for clinical text and spatial prompts, i.e. TextPromptTrainer's text (LLMSeg)
composed with PromptTrainer's prompt channels and interaction simulation. Each training batch gets the text alone,
the prompts alone or both, so the model serves all three. Logic: nnunet_prompt.training.text_and_prompt_trainer.
"""
from nnunet_prompt.interaction.simulation import SimulationPolicy
from nnunet_prompt.training.schedules import DemoSchedule, FixedEpochs
from nnunet_prompt.training.text_and_prompt_trainer import TextAndPromptTrainerBase


class TextAndPromptTrainer(TextAndPromptTrainerBase):
    pass


class TextAndPromptTrainer_5epochs(FixedEpochs, TextAndPromptTrainer):
    fixed_num_epochs = 5


class TextAndPromptTrainer_50epochs(FixedEpochs, TextAndPromptTrainer):
    fixed_num_epochs = 50


class TextAndPromptTrainer_250epochs(FixedEpochs, TextAndPromptTrainer):
    fixed_num_epochs = 250


class TextAndPromptTrainer_allowMissingText(TextAndPromptTrainer):
    """Cases without clinical text train with empty text instead of stopping training."""
    allow_missing_text = True


class TextAndPromptTrainer_demo(DemoSchedule, TextAndPromptTrainer):
    """The CPU demo's schedule, with at most 2 interaction rounds per batch (as PromptTrainer_demo)."""
    simulation_policy = SimulationPolicy(num_rounds=2)

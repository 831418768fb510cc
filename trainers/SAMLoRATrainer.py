"""SAM ViT encoder with LoRA inside nnU-Net (SAM-RT, the MedSAM study). Train on a SAM2DPlanner plan:

    export NNUNET_PROMPT_SAM_CHECKPOINT=/models/sam_vit_b_01ec64.pth
    nnUNetv2_train DATASET 2d 0 -tr SAMLoRATrainer -p nnUNetPlansSAM512

Logic: nnunet_prompt.training.sam_trainer and nnunet_prompt.sam. Variants:

* ``SAMLoRATrainer``: SAM-RT stage 1, the dataset's k classes, no prompts;
* ``SAMLoRATrainer_box``: MedSAM-style, one box per target per slice (0-20 mm margin), predicts that target;
* ``SAMLoRATrainer_prompt``: points, box and mask through the unified prompt-visual encoder (f_p added to
  the image embedding); ``_GaRPA``, ``_ProViCMA``, ``_GaRPA_ProViCMA``: SAM-RT Table 1's ablations;
* ``SAMLoRATrainer_SeqLoRA``: SAM-RT stage 2 (all of it: SeqLoRA + GaRPA + ProViCMA, prompts), from the stage-1
  model that NNUNET_PROMPT_SEQLORA_FROM names; ``SAMLoRATrainer_SeqLoRA_noPrompt``: SeqLoRA alone, k classes;
* ``*_randomInit``: no checkpoint file, a randomly initialised ViT-B (NNUNET_PROMPT_SAM_RANDOM_VARIANT), for
  experiments and GPU timing only;
* ``*_5epochs`` etc.: short schedules; ``*_demo``: the CPU demo schedule (NNUNET_PROMPT_DEMO_EPOCHS/ITERS).
"""
from nnunet_prompt.interaction.simulation import SimulationPolicy
from nnunet_prompt.sam.network import SAMNetworkOptions
from nnunet_prompt.training.sam_trainer import SAMDemoSchedule, SAMLoRATrainerBase, SAMPromptTrainerBase
from nnunet_prompt.training.schedules import FixedEpochs


class SAMLoRATrainer(SAMLoRATrainerBase):
    pass


class SAMLoRATrainer_randomInit(SAMLoRATrainer):
    sam_random_init = True


class SAMLoRATrainer_box(SAMPromptTrainerBase):
    """The MedSAM study: box prompts only, one round (no refinement clicks)."""
    simulation_policy = SimulationPolicy(num_rounds=1, initial_types=("box",))
    validation_prompt_type = "box"


class SAMLoRATrainer_box_randomInit(SAMLoRATrainer_box):
    sam_random_init = True


class SAMLoRATrainer_prompt(SAMPromptTrainerBase):
    """Points, box and mask (interaction rounds as PromptTrainer) through E_p; no GaRPA, no ProViCMA."""


class SAMLoRATrainer_GaRPA(SAMLoRATrainer_prompt):
    sam_options = SAMNetworkOptions(garpa=True)


class SAMLoRATrainer_ProViCMA(SAMLoRATrainer_prompt):
    sam_options = SAMNetworkOptions(provicma=True)


class SAMLoRATrainer_GaRPA_ProViCMA(SAMLoRATrainer_prompt):
    sam_options = SAMNetworkOptions(garpa=True, provicma=True)


class SAMLoRATrainer_SeqLoRA(SAMLoRATrainer_prompt):
    """SAM-RT's second stage: SeqLoRA + GaRPA + ProViCMA with prompts."""
    sam_options = SAMNetworkOptions(seqlora=True, garpa=True, provicma=True)


class SAMLoRATrainer_SeqLoRA_noPrompt(SAMLoRATrainer):
    """SeqLoRA alone on an unprompted k-class task."""
    sam_options = SAMNetworkOptions(seqlora=True)


class SAMLoRATrainer_prompt_randomInit(SAMLoRATrainer_prompt):
    sam_random_init = True


class SAMLoRATrainer_GaRPA_ProViCMA_randomInit(SAMLoRATrainer_GaRPA_ProViCMA):
    sam_random_init = True


class SAMLoRATrainer_1epoch(FixedEpochs, SAMLoRATrainer):
    fixed_num_epochs = 1


class SAMLoRATrainer_5epochs(FixedEpochs, SAMLoRATrainer):
    fixed_num_epochs = 5


class SAMLoRATrainer_50epochs(FixedEpochs, SAMLoRATrainer):
    fixed_num_epochs = 50


class SAMLoRATrainer_box_5epochs(FixedEpochs, SAMLoRATrainer_box):
    fixed_num_epochs = 5


class SAMLoRATrainer_box_50epochs(FixedEpochs, SAMLoRATrainer_box):
    fixed_num_epochs = 50


class SAMLoRATrainer_demo(SAMDemoSchedule, SAMLoRATrainer):
    """CPU-sized schedule (NNUNET_PROMPT_DEMO_EPOCHS x NNUNET_PROMPT_DEMO_ITERS), for demos and tests."""


class SAMLoRATrainer_box_demo(SAMDemoSchedule, SAMLoRATrainer_box):
    pass

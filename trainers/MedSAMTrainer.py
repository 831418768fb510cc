"""MedSAM fine-tuning (the MedSAM study's "SAM finetune") on a SAM2DPlanner plan:

    export NNUNET_PROMPT_SAM_CHECKPOINT=/models/medsam_vit_b.pth
    nnUNetv2_train DATASET 2d 0 -tr MedSAMTrainer -p nnUNetPlansSAM512

Logic: nnunet_prompt.training.medsam_trainer. Variants:

* ``MedSAMTrainer``: full fine-tuning (image encoder, prompt encoder, mask decoder), MedSAM's [0, 1] pixels;
* ``MedSAMTrainer_SAM``: the same from an official SAM file (ImageNet pixel normalisation);
* ``MedSAMTrainer_frozenEncoder``: image encoder frozen; ``MedSAMTrainer_LoRA``: LoRA in the image encoder;
* ``MedSAMTrainer_zeroShot``: no training (the file as is), final validation only; ``nnunet-prompt predict
  --zero-shot`` builds this model without nnUNetv2_train;
* ``*_randomInit``: no file, a random SAM of the config NNUNET_PROMPT_SAM_RANDOM_CONFIG names (experiments, tests);
* ``*_demo``: the CPU demo schedule (NNUNET_PROMPT_DEMO_EPOCHS x NNUNET_PROMPT_DEMO_ITERS).
"""
from nnunet_prompt.training.medsam_trainer import MedSAMDemoSchedule, MedSAMTrainerBase, ZeroEpochs
from nnunet_prompt.training.schedules import FixedEpochs


class MedSAMTrainer(MedSAMTrainerBase):
    pass


class MedSAMTrainer_SAM(MedSAMTrainer):
    medsam_pixel_norm = "imagenet"


class MedSAMTrainer_frozenEncoder(MedSAMTrainer):
    finetune = "frozen_encoder"


class MedSAMTrainer_LoRA(MedSAMTrainer):
    finetune = "lora"


class MedSAMTrainer_zeroShot(ZeroEpochs, MedSAMTrainer):
    pass


class MedSAMTrainer_20epochs(FixedEpochs, MedSAMTrainer):
    """The MedSAM study's longest fine-tuning (20 epochs; nnU-Net's epoch is 250 iterations)."""
    fixed_num_epochs = 20


class MedSAMTrainer_randomInit(MedSAMTrainer):
    sam_random_init = True


class MedSAMTrainer_demo(MedSAMDemoSchedule, MedSAMTrainer):
    pass


class MedSAMTrainer_randomInit_demo(MedSAMDemoSchedule, MedSAMTrainer_randomInit):
    pass


class MedSAMTrainer_frozenEncoder_demo(MedSAMDemoSchedule, MedSAMTrainer_frozenEncoder):
    pass


class MedSAMTrainer_LoRA_demo(MedSAMDemoSchedule, MedSAMTrainer_LoRA):
    pass

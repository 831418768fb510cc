"""SAMAdapter3DTrainer: SAM's ViT adapted to 3D with spatial adapters, an auto prompt generator and a
multi-layer aggregation decoder (AutoSAM Adapter). Needs NNUNET_PROMPT_SAM_CHECKPOINT (an official
SAM file, ViT-B in AutoSAM Adapter) and 3D plans with an isotropic patch (`nnunet-prompt plan DATASET -pl
SAMAdapter3DPlanner`). Logic: nnunet_prompt.training.sam_adapter3d_trainer, nnunet_prompt.sam.adapter3d,
nnunet_prompt.networks.auto_sam_adapter.

Ablations (Table 3) and schedules follow nnU-Net's naming.
"""
from nnunet_prompt.networks.auto_sam_adapter import AutoSAMOptions
from nnunet_prompt.training.sam_adapter3d_trainer import SAMAdapter3DTrainerBase
from nnunet_prompt.training.schedules import DemoSchedule, FixedEpochs


class SAMAdapter3DTrainer(SAMAdapter3DTrainerBase):
    pass


class SAMAdapter3DTrainer_noAPG(SAMAdapter3DTrainerBase):
    """Table 3: without the auto prompt generator (the decoder sees the image embedding alone)."""
    autosam_options = AutoSAMOptions(use_apg=False)


class SAMAdapter3DTrainer_noMLA(SAMAdapter3DTrainerBase):
    """Table 3: without multi-layer aggregation (the decoder sees the last embedding only, no stage features)."""
    autosam_options = AutoSAMOptions(use_multilayer_aggregation=False)


class SAMAdapter3DTrainer_noAPG_noMLA(SAMAdapter3DTrainerBase):
    """Table 3: neither."""
    autosam_options = AutoSAMOptions(use_apg=False, use_multilayer_aggregation=False)


class SAMAdapter3DTrainer_randomInit(SAMAdapter3DTrainerBase):
    """Experiments without a SAM file: the same network and the same frozen/trainable split, with a randomly
    initialised ViT (ViT-B's shape, or the shape of the file NNUNET_PROMPT_SAM_CHECKPOINT names, if set). Its
    checkpoints hold the full network, frozen weights included."""
    sam_random_init = True


class SAMAdapter3DTrainer_1epoch(FixedEpochs, SAMAdapter3DTrainer):
    fixed_num_epochs = 1


class SAMAdapter3DTrainer_5epochs(FixedEpochs, SAMAdapter3DTrainer):
    fixed_num_epochs = 5


class SAMAdapter3DTrainer_50epochs(FixedEpochs, SAMAdapter3DTrainer):
    fixed_num_epochs = 50


class SAMAdapter3DTrainer_200epochs(FixedEpochs, SAMAdapter3DTrainer):  # AutoSAM Adapter's
    fixed_num_epochs = 200


class SAMAdapter3DTrainer_demo(DemoSchedule, SAMAdapter3DTrainer):
    """The CPU demo's short schedule (NNUNET_PROMPT_DEMO_EPOCHS x NNUNET_PROMPT_DEMO_ITERS, AdamW 1e-3)."""

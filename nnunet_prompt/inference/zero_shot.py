"""Zero-shot MedSAM (the MedSAM study's "zero-shot"): a SAM / MedSAM file used as is, predicted through the same
path as a fine-tuned model.

``nnunet-prompt predict ... -tr MedSAMTrainer --zero-shot --sam-checkpoint FILE`` first makes an ordinary nnU-Net
model folder for it, ``nnUNet_results/DATASET/MedSAMTrainer_zeroShot__PLANS__CONFIG/``:

* ``plans.json``: the preprocessed plans (``nnUNet_preprocessed/DATASET/PLANS.json``) with the MedSAM record (the
  file's reference, its SamConfig at the planned patch size, the pixel normalisation), ``dataset.json``;
* ``fold_all/checkpoint_final.pth``: nnU-Net's checkpoint dict holding the network built from the file (all weights)
  and no mirroring (MedSAM predicts each slice once).

Then ``PromptPredictor`` predicts from that folder as from any trained model (slice by slice, the boxes of each
slice). Why a folder and not a network handed to the predictor in memory: prediction, the session, the server and
``nnunet-prompt evaluate`` then treat zero-shot and fine-tuned models alike, and the folder says what was predicted.

``MedSAMTrainer_zeroShot`` is a trainer with zero epochs, so ``nnUNetv2_train DATASET 2d FOLD -tr
MedSAMTrainer_zeroShot`` gives the same network and, in addition, the prompted validation of a fold.

The folder is reused when its record names the same file (path, size, encoder shape), pixel normalisation and
config, and rebuilt otherwise (said on stderr). Writing order: plans.json removed, checkpoint written (atomically),
dataset.json and plans.json written (atomically): a folder whose plans.json is there is complete.
"""
from __future__ import annotations

import json
import os
import sys

import torch

from nnunet_prompt.io_utils import InputFileError, atomic_path, atomic_write_json, read_json
from nnunet_prompt.model_record import PLANS_KEY, ModelRecord, put_record
from nnunet_prompt.sam import medsam_record
from nnunet_prompt.sam.checkpoint import SAMBaseReference

ZERO_SHOT_SUFFIX = "_zeroShot"
ZERO_SHOT_FOLD = "all"


def zero_shot_trainer_class(trainer_name: str):
    """The zero-shot class of a MedSAM trainer family: TRAINER_zeroShot (MedSAMTrainer -> MedSAMTrainer_zeroShot)."""
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_prompt.training.medsam_trainer import MedSAMTrainerBase
    ensure_trainer_path_registered()
    name = trainer_name if trainer_name.endswith(ZERO_SHOT_SUFFIX) else trainer_name + ZERO_SHOT_SUFFIX
    cls = recursive_find_trainer_class_by_name(name)
    if cls is None or not issubclass(cls, MedSAMTrainerBase):
        raise InputFileError(f"--zero-shot predicts a MedSAM/SAM file with a MedSAM trainer's network: -tr "
                             f"{trainer_name!r} has no zero-shot variant {name!r}. Use -tr MedSAMTrainer.")
    return cls


def _same_model(folder: str, sam: dict) -> tuple:
    """(reusable, why not) for an existing zero-shot folder."""
    plans_file = os.path.join(folder, "plans.json")
    ckpt = os.path.join(folder, f"fold_{ZERO_SHOT_FOLD}", "checkpoint_final.pth")
    if not os.path.isfile(plans_file) or not os.path.isfile(ckpt):
        return False, "incomplete"
    try:
        old = json.load(open(plans_file, encoding="utf-8")).get(PLANS_KEY, {}).get("sam") or {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False, "its plans.json is damaged"
    changed = [k for k in ("base", "pixel_norm", "sam_config") if old.get(k) != sam.get(k)]
    if changed:
        was = old.get("base", {}) or {}
        return False, (f"it was built from {was.get('path')} ({was.get('num_bytes')} bytes, pixel normalisation "
                       f"{old.get('pixel_norm')}); differs in {', '.join(changed)}")
    return True, ""


def build_zero_shot_model(dataset: str, plans_identifier: str, configuration: str, trainer_name: str,
                          sam_checkpoint: str, pixel_norm: str = "unit") -> str:
    """The model folder of zero-shot MedSAM (see module doc), built or reused; returns its path."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_prompt.networks.contract import NUM_OUTPUTS, unwrap
    from nnunet_prompt.nnunet_env import dataset_name, require_folders
    from nnunet_prompt.training.sam_trainer import check_sam_patch

    require_folders("nnUNet_preprocessed", "nnUNet_results")
    cls = zero_shot_trainer_class(trainer_name)
    name = dataset_name(dataset)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    plans_file = os.path.join(pre, f"{plans_identifier}.json")
    if not os.path.isfile(plans_file):
        raise InputFileError(f"No plans {plans_file} (-p {plans_identifier}): zero-shot MedSAM predicts on a SAM 2D "
                             f"plan; make one with `nnunet-prompt plan {dataset} -pl SAM2DPlanner` (plans "
                             f"nnUNetPlansSAM512).")
    plans = read_json(plans_file, "plans file")
    dataset_json = read_json(os.path.join(pre, "dataset.json"), "dataset.json")
    pm = PlansManager(plans)
    if configuration not in pm.available_configurations:
        raise InputFileError(f"Plans {plans_file} have no configuration {configuration!r} (-c); they have "
                             f"{pm.available_configurations}.")
    cm = pm.get_configuration(configuration)
    size = check_sam_patch(cm)
    pixel_norm = medsam_record.check_pixel_norm(pixel_norm, "--pixel-norm")
    sam = medsam_record.record(SAMBaseReference.from_file(sam_checkpoint), pixel_norm, size)
    record = ModelRecord(trainer=cls.__name__, prompt_encoding=cls.prompt_encoding.to_dict(), sam=sam,
                         network=cls.network_options())
    folder = get_output_folder(name, cls.__name__, plans_identifier, configuration)
    reusable, why = _same_model(folder, sam)
    if reusable:
        print(f"zero-shot model: reusing {folder} (built from {sam['base']['path']})")
        return folder
    if why != "incomplete":
        print(f"nnunet-prompt: note: rebuilding the zero-shot model {folder}: {why}.", file=sys.stderr)

    put_record(plans, record)
    pm = PlansManager(plans)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    network = cls.build_network_architecture(pm, cm, n_in, NUM_OUTPUTS, False)
    checkpoint = {  # the keys of nnUNetTrainer.save_checkpoint (2.8.1); nothing was trained
        'network_weights': unwrap(network).state_dict(), 'optimizer_state': None, 'grad_scaler_state': None,
        'logging': None, '_best_ema': None, 'current_epoch': 0,
        'init_args': {'plans': plans, 'configuration': configuration, 'fold': ZERO_SHOT_FOLD,
                      'dataset_json': dataset_json, 'device': 'cpu'},
        'trainer_name': cls.__name__, 'inference_allowed_mirroring_axes': None,
    }
    os.makedirs(os.path.join(folder, f"fold_{ZERO_SHOT_FOLD}"), exist_ok=True)
    if os.path.exists(os.path.join(folder, "plans.json")):
        os.remove(os.path.join(folder, "plans.json"))  # the folder is incomplete until plans.json is back
    with atomic_path(os.path.join(folder, f"fold_{ZERO_SHOT_FOLD}", "checkpoint_final.pth")) as tmp:
        torch.save(checkpoint, tmp)
    atomic_write_json(dataset_json, os.path.join(folder, "dataset.json"))
    atomic_write_json(plans, os.path.join(folder, "plans.json"))
    print(f"zero-shot model: built {folder} from {sam['base']['path']} (pixel normalisation {pixel_norm})")
    return folder

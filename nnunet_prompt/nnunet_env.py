"""nnU-Net's environment (folders, dataset ids, the external trainer folder), checked with clear errors."""
from __future__ import annotations

import os
from typing import Union

NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


class NnUNetEnvironmentError(RuntimeError):
    pass


def require_folders(*names: str) -> None:
    """Fail with one message listing every nnU-Net folder variable that is missing."""
    names = names or NNUNET_FOLDERS
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        lines = "\n".join(f"  export {n}=/path/to/{n}" for n in missing)
        raise NnUNetEnvironmentError(f"nnU-Net folder variable(s) not set: {', '.join(missing)}. Set them, e.g.\n{lines}\n"
                                     f"(see nnU-Net's documentation/setting_up_paths.md).")


def trainer_path() -> str:
    """The folder to put into nnUNet_extTrainer: the installed trainers/ folder of nnunet-prompt."""
    import nnunet_prompt_trainers
    return os.path.abspath(list(nnunet_prompt_trainers.__path__)[0])


def ensure_trainer_path_registered() -> None:
    """Add our trainer folder to nnUNet_extTrainer for this process and its children, if missing."""
    ours = trainer_path()
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if ours not in [os.path.abspath(p) for p in current]:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(current + [ours])


def dataset_name(dataset: Union[int, str]) -> str:
    """Dataset id or name -> 'DatasetXXX_Name', with a message naming the folders searched."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise NnUNetEnvironmentError(
            f"Unknown dataset '{dataset}': no DatasetXXX folder with this id in nnUNet_raw "
            f"({os.environ.get('nnUNet_raw')}), nnUNet_preprocessed ({os.environ.get('nnUNet_preprocessed')}) or "
            f"nnUNet_results ({os.environ.get('nnUNet_results')}). Check the id or the variables. ({e})") from None


def dataset_json_of(name: str) -> dict:
    """A registered dataset's dataset.json (nnUNet_preprocessed's copy, else nnUNet_raw's)."""
    from nnunet_prompt.io_utils import read_json
    for var in ("nnUNet_preprocessed", "nnUNet_raw"):
        path = os.path.join(os.environ.get(var) or "", name, "dataset.json")
        if os.environ.get(var) and os.path.isfile(path):
            return read_json(path, "dataset.json")
    raise NnUNetEnvironmentError(f"Dataset '{name}' has no dataset.json in nnUNet_preprocessed or nnUNet_raw.")

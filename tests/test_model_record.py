"""The one record a trained model is rebuilt from (plans["nnunet_prompt"]): written by training, enough to rebuild
the network with no file or variable beside the plans, refused with one message for old model folders, and
converted by `nnunet-prompt upgrade-model`."""
import json
import os
import shutil

import pytest
import torch

from conftest import CONFIG, PLANS, TRAINER, console_script, run
from nnunet_prompt.model_record import PLANS_KEY, ModelRecordError, record_from_plans


def _old_style_copy(trained, tmp_path):
    """The trained model folder as an nnunet-prompt from before the record left it: no record in plans.json, the
    prompt layout in prompt_encoding.json beside it."""
    dataset = os.path.basename(os.path.dirname(trained["folder"]))
    folder = tmp_path / "results" / dataset / os.path.basename(trained["folder"])
    shutil.copytree(trained["folder"], folder, ignore=shutil.ignore_patterns("validation", "*.png"))
    plans = json.load(open(folder / "plans.json"))
    record = plans.pop(PLANS_KEY)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "prompt_encoding.json").write_text(json.dumps(record["prompt_encoding"]))
    return folder, record


def test_the_network_is_rebuilt_from_the_plans_alone(trained):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
    ensure_trainer_path_registered()
    plans = json.load(open(os.path.join(trained["folder"], "plans.json")))
    ckpt = torch.load(os.path.join(trained["folder"], "fold_0", "checkpoint_final.pth"), map_location="cpu",
                      weights_only=False)
    # the same record is in the checkpoint (nnU-Net's init_args), which is what --c resumes from
    assert ckpt["init_args"]["plans"][PLANS_KEY] == plans[PLANS_KEY]
    pm = PlansManager(plans)
    cls = recursive_find_trainer_class_by_name(TRAINER)
    net = cls.build_network_architecture(pm, pm.get_configuration(CONFIG), 1, 2, enable_deep_supervision=False)
    net.load_state_dict(ckpt["network_weights"])  # strict: exactly the trained network
    # and without the record it cannot be rebuilt: one message that names the fix
    del plans[PLANS_KEY]
    with pytest.raises(ModelRecordError, match="upgrade-model"):
        cls.build_network_architecture(PlansManager(plans), pm.get_configuration(CONFIG), 1, 2, False)


def test_an_old_model_folder_is_refused_and_upgrade_model_converts_it(trained, tmp_path):
    from nnunet_prompt.inference.predictor import PromptPredictor
    folder, record = _old_style_copy(trained, tmp_path)
    predictor = PromptPredictor(device=torch.device("cpu"), allow_tqdm=False)
    with pytest.raises(ModelRecordError, match=f"prompt_encoding.json.*upgrade-model {folder}"):
        predictor.initialize_from_trained_model_folder(str(folder), (0,))
    # the CLI says the same in one line, exit code 2, before writing anything
    out = tmp_path / "pred"
    (tmp_path / "none.json").write_text("{}")
    proc = run([console_script("nnunet-prompt"), "predict", "-i", os.path.join(trained["raw"], "imagesTs"), "-o",
                str(out), "-d", str(trained["id"]), "-c", CONFIG, "-tr", TRAINER, "-p", PLANS,
                "--prompts", str(tmp_path / "none.json"), "-device", "cpu"],
               dict(trained["env"], nnUNet_results=str(tmp_path / "results")))
    assert proc.returncode == 2 and "upgrade-model" in proc.stdout and not out.exists(), proc.stdout

    proc = run([console_script("nnunet-prompt"), "upgrade-model", str(folder)], trained["env"])
    assert proc.returncode == 0, proc.stdout
    plans = json.load(open(folder / "plans.json"))
    upgraded = record_from_plans(plans)
    assert upgraded.to_dict() == record  # exactly what today's training writes
    assert PLANS_KEY not in json.load(open(folder / "plans.before_upgrade.json"))
    predictor.initialize_from_trained_model_folder(str(folder), (0,))
    assert predictor.prompt_encoding.to_dict() == record["prompt_encoding"]
    again = run([console_script("nnunet-prompt"), "upgrade-model", str(folder)], trained["env"])
    assert again.returncode == 0 and "up to date" in again.stdout


def test_resuming_refuses_a_checkpoint_of_other_network_options(trained, planned_dataset, monkeypatch):
    """--c takes the record the checkpoint was trained with; a trainer class that would build another network
    says so instead of loading mismatching weights."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.file_path_utilities import load_json
    from nnunet_prompt.nnunet_env import ensure_trainer_path_registered
    ensure_trainer_path_registered()
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    for k, v in trained["env"].items():
        monkeypatch.setenv(k, v)
    path = os.path.join(trained["folder"], "fold_0", "checkpoint_final.pth")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["init_args"]["plans"][PLANS_KEY]["network"] = {"psap_hidden_channels": 8}
    pre = os.path.join(trained["env"]["nnUNet_preprocessed"], os.path.basename(os.path.dirname(trained["folder"])))
    cls = recursive_find_trainer_class_by_name(TRAINER)
    trainer = cls(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=True), CONFIG, 0,
                  load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))
    with pytest.raises(ModelRecordError, match="network options"):
        trainer.adopt_record(ckpt, path)

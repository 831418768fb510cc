"""Shared fixtures: a tiny synthetic dataset planned and preprocessed by the real nnU-Net."""
import os
import subprocess
import sys

import pytest

DATASET_ID = 991
CONFIG = "3d_fullres"
PLANS = "nnUNetPlansNarrow"
TRAINER = "PromptTrainer_demo"


def nnunet_env(root) -> dict:
    """Environment for nnU-Net subprocesses: our folders, our trainers, small-machine settings."""
    from nnunet_prompt.nnunet_env import trainer_path
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
        "nnUNet_extTrainer": trainer_path(),
        "nnUNet_compile": "0",
        "nnUNet_n_proc_DA": "0",
        "nnUNet_def_n_proc": "1",
        "OMP_NUM_THREADS": "2",
    })
    return env


def console_script(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def run(cmd, env, timeout=900):
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return proc


def make_tiny_dataset(env, dataset_id, name, **generator_kwargs) -> str:
    """Generate a tiny phantom dataset, then nnU-Net's fingerprint, NarrowUNetPlanner plans and 3d_fullres
    preprocessing through nnU-Net's own API (the nnU-Net folder variables must point at env's folders)."""
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunet_prompt_planners.narrow_planner import NarrowUNetPlanner
    raw = generate_synthetic_hn_dataset(env["nnUNet_raw"], dataset_id, name, num_training=6, num_test=2,
                                        shape_xyz=(40, 40, 16), **generator_kwargs)
    extract_fingerprint_dataset(dataset_id, num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
    plan_experiment_dataset(dataset_id, NarrowUNetPlanner)
    preprocess_dataset(dataset_id, PLANS, (CONFIG,), [1], show_progress_bar=False)
    return raw


@pytest.fixture(scope="session")
def planned_dataset(tmp_path_factory):
    """Dataset991: 6 training + 2 held-out tiny phantoms; fingerprint, NarrowUNetPlanner plans and 3d_fullres
    preprocessing through nnU-Net's own API (in this process, with the fixture's folders)."""
    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_env(root)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[k], exist_ok=True)
    old = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_def_n_proc")}
    os.environ.update({k: env[k] for k in old})
    raw = make_tiny_dataset(env, DATASET_ID, "TinyHN")
    yield {"root": root, "env": env, "raw": raw, "id": DATASET_ID, "name": os.path.basename(raw)}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def trained(planned_dataset):
    """PromptTrainer_demo trained for 1 epoch of 3 iterations with `nnUNetv2_train` on the tiny dataset."""
    env = dict(planned_dataset["env"], NNUNET_PROMPT_DEMO_EPOCHS="1", NNUNET_PROMPT_DEMO_ITERS="3")
    cmd = [console_script("nnUNetv2_train"), str(planned_dataset["id"]), CONFIG, "0", "-tr", TRAINER, "-p", PLANS,
           "-device", "cpu"]
    proc = run(cmd, env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    folder = os.path.join(env["nnUNet_results"], planned_dataset["name"], f"{TRAINER}__{PLANS}__{CONFIG}")
    return {"folder": folder, "env": env, "log": proc.stdout, "cmd": cmd, **planned_dataset}

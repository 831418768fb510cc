"""Shared fixtures: a tiny synthetic dataset planned and preprocessed by the real nnU-Net."""
import os
import subprocess
import sys

import pytest

DATASET_ID = 991
CONFIG = "3d_fullres"
PLANS = "nnUNetPlansNarrow"
TRAINER = "PromptTrainer_demo"
TEXT_TRAINER = "TextPromptTrainer_demo"


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


def start_server(trained: dict, *extra):
    """`nnunet-prompt serve` on a trained fixture's model, as a subprocess on a free loopback port: (process, url)."""
    from nnunet_prompt.serve.launch import start_server as launch
    try:
        return launch(trained["folder"], "0", "cpu", extra, env=trained["env"], timeout_s=180)
    except RuntimeError as e:
        raise AssertionError(str(e)) from None


def plan_and_preprocess_tiny(dataset_id: int) -> None:
    """nnU-Net's fingerprint, NarrowUNetPlanner plans and 3d_fullres preprocessing of a raw dataset, through
    nnU-Net's own API (the nnU-Net folder variables must point at the test's folders)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset, preprocess_dataset)
    from nnunet_prompt_planners.narrow_planner import NarrowUNetPlanner
    extract_fingerprint_dataset(dataset_id, num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
    plan_experiment_dataset(dataset_id, NarrowUNetPlanner)
    preprocess_dataset(dataset_id, PLANS, (CONFIG,), [1], show_progress_bar=False)


def make_tiny_dataset(env, dataset_id, name, **generator_kwargs) -> str:
    """Generate a tiny phantom dataset, then plan and preprocess it (``plan_and_preprocess_tiny``)."""
    from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset
    raw = generate_synthetic_hn_dataset(env["nnUNet_raw"], dataset_id, name, num_training=6, num_test=2,
                                        shape_xyz=(40, 40, 16), **generator_kwargs)
    plan_and_preprocess_tiny(dataset_id)
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


TEXT_DATASET_ID = 996  # 992 is the multi-class test's dataset in the same folders


@pytest.fixture(scope="session")
def text_dataset(planned_dataset):
    """Dataset996 beside the session's Dataset991: laterality and N stage decide the target (label 2 = node).
    (Here, not in test_text_trainer.py, so that test_ddp.py shares the session's one.)"""
    raw = make_tiny_dataset(planned_dataset["env"], TEXT_DATASET_ID, "TinyTextHN", nodal_involvement=0.5)
    return dict(planned_dataset, raw=raw, name=os.path.basename(raw), id=TEXT_DATASET_ID)


def train_demo_trainer(planned_dataset: dict, trainer: str, iterations: int) -> dict:
    """A *_demo trainer trained for 1 epoch of `iterations` with `nnUNetv2_train` on the tiny dataset; returns
    planned_dataset plus the model folder, the env (short schedule; a --c run adds epochs to it), log, command."""
    env = dict(planned_dataset["env"], NNUNET_PROMPT_DEMO_EPOCHS="1", NNUNET_PROMPT_DEMO_ITERS=str(iterations),
               # the caller's thread budget (CI: 2 cores shared with other jobs)
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", planned_dataset["env"]["OMP_NUM_THREADS"]))
    cmd = [console_script("nnUNetv2_train"), str(planned_dataset["id"]), CONFIG, "0", "-tr", trainer, "-p", PLANS,
           "-device", "cpu"]
    proc = run(cmd, env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    folder = os.path.join(env["nnUNet_results"], planned_dataset["name"], f"{trainer}__{PLANS}__{CONFIG}")
    # planned_dataset first: its "env" must not replace this one
    return {**planned_dataset, "folder": folder, "env": env, "log": proc.stdout, "cmd": cmd}


@pytest.fixture(scope="session")
def text_trained(text_dataset, tiny_bert):
    """TextPromptTrainer_demo trained on Dataset996 for 1 epoch of 2 iterations with the tiny BERT as its language
    model (``NNUNET_PROMPT_TEXT_MODEL`` at training; prediction reads the stored choice)."""
    proc, cmd, env = train_text_trainer(text_dataset, TEXT_TRAINER, {"NNUNET_PROMPT_TEXT_MODEL": tiny_bert})
    assert proc.returncode == 0, proc.stdout[-5000:]
    folder = os.path.join(env["nnUNet_results"], text_dataset["name"], f"{TEXT_TRAINER}__{PLANS}__{CONFIG}")
    return dict(text_dataset, folder=folder, cmd=cmd, train_env=env, tiny_bert=tiny_bert)


def train_text_trainer(ds, trainer, env_extra, extra_args=()):
    """`nnUNetv2_train` of a text trainer for 1 epoch of 2 iterations: (process, command, env)."""
    env = dict(ds["env"], NNUNET_PROMPT_DEMO_EPOCHS="1", NNUNET_PROMPT_DEMO_ITERS="2", **env_extra)
    cmd = [console_script("nnUNetv2_train"), str(ds["id"]), CONFIG, "0", "-tr", trainer, "-p", PLANS, "-device", "cpu",
           *extra_args]
    return run(cmd, env), cmd, env


@pytest.fixture(scope="session")
def trained(planned_dataset):
    """PromptTrainer_demo trained for 1 epoch of 3 iterations with `nnUNetv2_train` on the tiny dataset."""
    return train_demo_trainer(planned_dataset, TRAINER, 3)


def _save_tiny_bert(folder) -> str:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer, saved as a Hugging Face model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    os.makedirs(folder, exist_ok=True)
    words = "left right sided tumour nodal node involvement t1 t2 t3 n0 n1 m0 c".split()
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + chars + list(",.-") + ["##" + c for c in chars]
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab))
    tokenizer = BertTokenizerFast(os.path.join(folder, "vocab.txt"))
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _save_tiny_gpt2(folder) -> str:
    """A 2-layer GPT-2 (a decoder, hidden 32) with a byte-level BPE tokenizer that adds <s> in front."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast
    os.makedirs(folder, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["Left-sided tumour, cT2N1M0.", "Right-sided tumour, cT1N0M0."] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<unk>", "<pad>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>")
    model = GPT2Model(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                 bos_token_id=0, eos_token_id=1))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    return _save_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))

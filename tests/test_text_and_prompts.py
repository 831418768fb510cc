"""TextAndPromptTrainer through nnU-Net's own CLI on the two-label text phantom (Dataset996: tumour, node): training
with the tiny BERT, `nnunet-prompt predict` with text and points per case, the session's set_text then add_point,
the prompt kinds it accepts and the server's text extension."""
import json
import os
import re

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import CONFIG, PLANS, console_script, run, start_server

TRAINER = "TextAndPromptTrainer_demo"


@pytest.fixture(scope="module")
def combined(text_dataset, tiny_bert):
    """1 epoch of 6 iterations (text, prompts and both are drawn among them) with the tiny BERT."""
    env = dict(text_dataset["env"], NNUNET_PROMPT_DEMO_EPOCHS="1", NNUNET_PROMPT_DEMO_ITERS="6",
               NNUNET_PROMPT_TEXT_MODEL=tiny_bert)
    proc = run([console_script("nnUNetv2_train"), str(text_dataset["id"]), CONFIG, "0", "-tr", TRAINER, "-p", PLANS,
                "-device", "cpu"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    folder = os.path.join(env["nnUNet_results"], text_dataset["name"], f"{TRAINER}__{PLANS}__{CONFIG}")
    return dict(text_dataset, folder=folder, train_env=env, log=proc.stdout)


def _cases(ds):
    return sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(ds["raw"], "imagesTs")))


def _centre(ds, case, value):
    """Voxel (x, y, z) at the centre of a label in a held-out case, and the label map (z, y, x)."""
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ds["raw"], "labelsTs", case + ".nii.gz")))
    z, y, x = np.argwhere(label == value).mean(0).round().astype(int)
    return (int(x), int(y), int(z)), label


def test_the_record_holds_text_and_prompts_and_validation_used_both(combined):
    record = json.load(open(os.path.join(combined["folder"], "plans.json")))["nnunet_prompt"]
    assert record["trainer"] == TRAINER
    assert record["prompt_encoding"]["channels"] and record["clinical_context"]["kind"] == "language_model"
    ckpt = torch.load(os.path.join(combined["folder"], "fold_0", "checkpoint_final.pth"), map_location="cpu",
                      weights_only=False)
    # a token per label value (background, tumour, node) beside the text; the U-Net reads the image, the 3 position
    # channels (where a patch lies in the whole image), the prompt channels and the 8 text-steered position maps
    assert tuple(ckpt["network_weights"]["target_tokens"].shape) == (3, 32)
    assert record["clinical_context"]["position"] == "image"
    first_conv = next(v for k, v in ckpt["network_weights"].items() if k.startswith("unet.encoder") and v.ndim == 5)
    context = record["clinical_context"]
    assert context["position_maps"] == 8 and context["laterality_contrast"]
    assert first_conv.shape[1] == 1 + 3 + len(record["prompt_encoding"]["channels"]) + 8
    assert ckpt["inference_allowed_mirroring_axes"] is None  # laterality is in the text
    # the log counts what the epoch's batches were given
    line = next(ln for ln in combined["log"].splitlines() if "batches given" in ln)
    counts = {k: int(v) for k, v in re.findall(r"(text first|text|prompts|both): (\d+)", line)}
    assert sum(counts[m] for m in ("text", "prompts", "both")) == 6 and counts["text first"] <= counts["both"]
    val = os.path.join(combined["folder"], "fold_0", "validation")
    used = json.load(open(os.path.join(val, "simulated_prompts.json")))
    sidecar = json.load(open(os.path.join(combined["raw"], "clinical_text.json")))["cases"]
    assert used and all(used[c]["text"] == sidecar[c]["text"] and used[c]["labels"] for c in used)


def test_training_draws_text_prompts_and_both(text_dataset):
    """Each mode is drawn, with the probabilities the class gives, and the text-first share of 'both'."""
    from nnunetv2.utilities.file_path_utilities import load_json
    from nnunet_prompt_trainers.TextAndPromptTrainer import TextAndPromptTrainer_demo
    pre = os.path.join(text_dataset["env"]["nnUNet_preprocessed"], text_dataset["name"])
    trainer = TextAndPromptTrainer_demo(dict(load_json(os.path.join(pre, f"{PLANS}.json")), continue_training=False),
                                        CONFIG, 0, load_json(os.path.join(pre, "dataset.json")), torch.device("cpu"))
    draws = [(trainer.draw_mode(), trainer._text_first) for _ in range(600)]
    counts = {m: sum(d[0] == m for d in draws) for m in ("text", "prompts", "both")}
    assert all(150 < n < 250 for n in counts.values()), counts
    first = sum(1 for m, f in draws if f)
    assert all(m == "both" for m, f in draws if f) and 0.3 < first / counts["both"] < 0.7
    # text-only batches get empty prompt channels, whatever the target
    trainer._mode = "text"
    data, target = torch.zeros(2, 1, 8, 8, 8), torch.ones(2, 1, 8, 8, 8)
    assert not trainer.simulate_prompts(data, target, rounds=2).any()
    trainer._mode, trainer._text_first = "prompts", False
    assert trainer.simulate_prompts(data, target, rounds=1).any()


def test_predict_with_text_and_a_point_per_case(combined, tmp_path):
    ds = combined
    sidecar = json.load(open(os.path.join(ds["raw"], "clinical_text.json")))["cases"]
    case, other = _cases(ds)[:2]
    point, _ = _centre(ds, case, 1)
    swapped = sidecar[case]["text"].replace("Left", "@").replace("Right", "Left").replace("@", "Right")

    def predict(name, prompts):
        pf = tmp_path / f"{name}.json"
        json.dump(prompts, open(pf, "w"))
        env = {k: v for k, v in ds["env"].items() if k != "NNUNET_PROMPT_TEXT_MODEL"}  # the stored choice is used
        proc = run([console_script("nnunet-prompt"), "predict", "-i", os.path.join(ds["raw"], "imagesTs"), "-o",
                    str(tmp_path / name), "-d", str(ds["id"]), "-c", CONFIG, "-f", "0", "-tr", TRAINER, "-p", PLANS,
                    "-device", "cpu", "--prompts", str(pf), "--save_probabilities"], env)
        return proc, {c: np.load(tmp_path / name / f"{c}.npz")["probabilities"] for c in prompts} \
            if proc.returncode == 0 else None

    # case: text + a click on the tumour; other: text only, no label -> both labels predicted from the text
    base = {case: {"label": "tumour", "text": sidecar[case]["text"], "positive_points": [list(point)]},
            other: {"text": sidecar[other]["text"]}}
    proc, probs = predict("both", base)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert probs[case].shape[0] == 3
    # the other case's text-only prompt without a label asked for every label; the first case's prompt for the
    # tumour only (an unprompted label's logit is UNPROMPTED_LOGIT, -100: probability ~0 everywhere)
    assert all(probs[other][c].max() > 1e-3 for c in (1, 2))
    assert probs[case][1].max() > 1e-3 and probs[case][2].max() < 1e-6
    proc, probs_swapped = predict("swapped", dict(base, **{case: dict(base[case], text=swapped)}))
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert not np.allclose(probs[case], probs_swapped[case]), "the text does not reach the output"
    proc, probs_no_click = predict("text_only", dict(base, **{case: {"label": "tumour", "text": sidecar[case]["text"]}}))
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert not np.allclose(probs[case], probs_no_click[case]), "the click does not reach the output"
    # two texts for one case: refused, naming the case and the file
    proc, _ = predict("two_texts", {case: [dict(base[case]), {"label": "node", "text": "Right-sided tumour."}]})
    assert proc.returncode == 2 and f"Case '{case}' has 2 prompts with 'text'" in proc.stdout


def test_which_labels_a_case_asks_for():
    """Text alone without a label: every label not otherwise prompted; with a label: that one; the text is the
    case's, once."""
    from types import SimpleNamespace
    from nnunet_prompt.inference.text_and_prompts import case_entry, per_label_prompts
    from nnunet_prompt.prompts.model import PromptError, parse_prompts
    from nnunet_prompt.text.config import ClinicalContextConfig
    prompts = parse_prompts({"a": [{"text": "Left."}, {"label": "node", "positive_points": [[1, 2, 3]]}],
                             "b": {"label": "tumour", "text": "Right."},
                             "c": [{"text": "Left."}, {"label": 1, "text": "Right."}]})
    pr = SimpleNamespace(case_prompts=prompts, dataset_json={"labels": {"background": 0, "tumour": 1, "node": 2}},
                         clinical_entries={"d": {"text": "Left-sided."}}, prompts_source="p.json",
                         clinical_context=ClinicalContextConfig())
    a = per_label_prompts(pr, "a")
    assert [(p.label, bool(p.positive_points), p.text) for p in a] == [("node", True, None), ("tumour", False, None)]
    assert case_entry(pr, "a")["text"] == "Left."
    assert [p.label for p in per_label_prompts(pr, "b")] == ["tumour"] and case_entry(pr, "b")["text"] == "Right."
    assert [p.label for p in per_label_prompts(pr, "d")] == ["tumour", "node"]  # sidecar only: every label
    assert case_entry(pr, "d")["text"] == "Left-sided." and per_label_prompts(pr, "e") is None
    with pytest.raises(PromptError, match=r"Case 'c' has 2 prompts with 'text' in 'p.json'"):
        case_entry(pr, "c")


def test_prompt_kinds_accept_text_and_spatial_prompts(combined):
    from nnunet_prompt.inference.prompt_kinds import kinds_read
    from nnunet_prompt.inference.session import load_session_predictor
    from nnunet_prompt.prompts.model import Prompt
    predictor = load_session_predictor(combined["folder"])
    read = kinds_read(predictor.prompt_channels_used, predictor.clinical_context.entry_key)
    assert read == {"text", "positive_points", "negative_points", "boxes", "mask"}
    predictor.prompts_source = "p.json"
    predictor.check_prompt_kinds(Prompt(text="Left.", positive_points=[(1, 2, 3)], boxes=[]), "hn_x")  # no error


def test_session_set_text_then_add_point_refines_one_object(combined):
    from nnunet_prompt.inference.session import InteractiveSession
    ds = combined
    case = _cases(ds)[0]
    (x, y, z), label = _centre(ds, case, 1)
    image = os.path.join(ds["raw"], "imagesTs", case + "_0000.nii.gz")
    s = InteractiveSession(ds["folder"], fold=0, device="cpu")
    assert s.takes_text and s.takes_prompts
    s.set_image(image)
    with pytest.raises(ValueError, match="set_target_label"):  # two labels: the session must be told which
        s.set_text("Left-sided tumour, cT2N0M0.")
    s.set_target_label("tumour")
    mask = s.set_text("Left-sided tumour, cT2N0M0.")
    assert mask.shape == label.shape and set(np.unique(mask)) <= {0, 1}  # one object, not a label map
    after_text = s._logits.clone()
    s.add_point((x, y, z))
    region = s.last_region
    sl = tuple(slice(a, b) for a, b in zip(*region))
    changed = s._logits != after_text
    assert changed[sl].any() and not changed.sum() > changed[sl].sum(), "the click rewrote outside its region"
    # the text still conditions the click's prediction: the same click without text gives other logits
    plain = InteractiveSession(ds["folder"], fold=0, device="cpu", predictor=s.predictor)
    plain.set_image(image)
    plain.set_target_label("tumour")
    plain.add_point((x, y, z))
    assert not torch.allclose(plain._logits[sl], s._logits[sl])
    # one undo takes the click back, the next the text
    s.undo()
    assert torch.equal(s._logits, after_text) and s._prompts.text == "Left-sided tumour, cT2N0M0."
    s.undo()
    assert s._prompts.text is None and not s.mask.any()


def test_server_accepts_text_through_its_extension(combined):
    from nnInteractive.inference.remote import _protocol as P
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession
    ds = combined
    case = _cases(ds)[0]
    img = sitk.ReadImage(os.path.join(ds["raw"], "imagesTs", case + "_0000.nii.gz"))
    image = sitk.GetArrayFromImage(img).astype(np.float32)
    proc, url = start_server(dict(ds, env={k: v for k, v in ds["env"].items() if k != "NNUNET_PROMPT_TEXT_MODEL"}))
    try:
        remote = nnInteractiveRemoteInferenceSession(url)
        try:
            remote.set_image(image[None], {"spacing": list(img.GetSpacing()[::-1])})
            buffer = np.zeros(image.shape, np.uint8)
            remote.set_target_buffer(buffer)
            path = remote._http.get(P.PATH_CAPABILITIES).json()["nnunet_prompt_extensions"]["set_text"]
            bad = remote._http.post(path, json={"text": 3, "label": "tumour"})
            assert bad.status_code == 400 and "'text' must be a string" in bad.json()["detail"]
            bad = remote._http.post(path, json={"text": "Left.", "label": "nerve"})
            assert bad.status_code == 400 and "Unknown label name 'nerve'" in bad.json()["detail"]
            reply = remote._http.post(path, json={"text": "Left-sided tumour, cT2N0M0.", "label": "tumour"})
            assert reply.status_code == 200, reply.text
            meta = json.loads(reply.headers[P.META_HEADER])
            assert meta["ran_prediction"] and meta["bbox"] == [[0, n] for n in image.shape]
            # the click after the text goes through the ordinary protocol, on the same object (label named above)
            remote.add_point_interaction([int(v) // 2 for v in image.shape], include_interaction=True)
        finally:
            remote.close()
    finally:
        proc.terminate()
        proc.wait(30)

"""Prompt kinds a model cannot use are refused, not silently dropped: text given to a spatial model, points given
to a text model (box-only models: test_box_prompt_trainer.py). As tests/test_bad_input.py: exit code 2, one message
naming the case, the prompts file and the fix, no output left, the raw data unchanged; valid prompts still work."""
import json
import os

import pytest

from conftest import CONFIG, PLANS, TEXT_TRAINER, TRAINER, console_script, run
from test_bad_input import _checksums, assert_no_output, refused


def test_kinds_read_by_each_model_family():
    from nnunet_prompt.inference.prompt_kinds import kinds_read, refuse_unread
    from nnunet_prompt.prompts.model import PromptError
    all_channels = ("positive_clicks", "negative_clicks", "box", "previous_mask")
    assert kinds_read(all_channels, None) == {"positive_points", "negative_points", "boxes", "mask"}
    assert kinds_read(("box",), None) == {"boxes"}
    assert kinds_read(None, "text") == {"text"}
    assert kinds_read(None, "fields") == frozenset()  # the categories ablation reads a sidecar's fields only
    refuse_unread(["boxes"], kinds_read(("box",), None), None, "BoxPromptTrainer", "Case 'a'")
    with pytest.raises(PromptError, match=r"Case 'a' gives text, which this model \(T\) does not read: it takes "
                                          r"the structured 'fields'.*Remove text.*TextPromptTrainer"):
        refuse_unread(["text"], kinds_read(None, "fields"), "fields", "T", "Case 'a'")


def _predict_args(ds, trainer, out, prompts):
    return ["predict", "-i", os.path.join(ds["raw"], "imagesTs"), "-o", str(out), "-d", str(ds["id"]), "-c", CONFIG,
            "-f", "0", "-tr", trainer, "-p", PLANS, "-device", "cpu", "--prompts", prompts]


def _cases(ds):
    return sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(os.path.join(ds["raw"], "imagesTs")))


def test_spatial_model_refuses_text_and_takes_valid_prompts(trained, tmp_path, capsys):
    from nnunet_prompt.interaction.user_prompts import prompt_from_label
    before = _checksums(trained["raw"])
    cases = _cases(trained)
    prompts = {c: prompt_from_label(os.path.join(trained["raw"], "labelsTs", c + ".nii.gz")) for c in cases}
    with_text = dict(prompts, **{cases[1]: dict(prompts[cases[1]], text="Left-sided tumour, cT2N0M0.")})
    bad = tmp_path / "with_text.json"
    bad.write_text(json.dumps(with_text))
    out = tmp_path / "refused"
    refused(capsys, _predict_args(trained, TRAINER, out, str(bad)), f"Case '{cases[1]}'", "with_text.json",
            "gives text", TRAINER, "Remove text", "TextPromptTrainer")
    assert_no_output(out)
    good = tmp_path / "valid.json"
    good.write_text(json.dumps(prompts))
    proc = run([console_script("nnunet-prompt"), *_predict_args(trained, TRAINER, tmp_path / "pred", str(good))],
               trained["env"])
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert sorted(f[:-7] for f in os.listdir(tmp_path / "pred") if f.endswith(".nii.gz")) == cases
    assert _checksums(trained["raw"]) == before


def test_text_model_refuses_points_and_boxes(text_trained, tmp_path, capsys):
    before = _checksums(text_trained["raw"])
    cases = _cases(text_trained)
    prompts = {c: {"text": "Left-sided tumour, cT2N1M0."} for c in cases}
    prompts[cases[1]] = {"text": "Right-sided tumour, cT1N0M0.", "positive_points": [[10, 10, 5]],
                         "boxes": [{"min": [5, 5, 2], "max": [12, 12, 6]}]}
    bad = tmp_path / "with_points.json"
    bad.write_text(json.dumps(prompts))
    out = tmp_path / "refused"
    refused(capsys, _predict_args(text_trained, TEXT_TRAINER, out, str(bad)), f"Case '{cases[1]}'",
            "with_points.json", "gives positive_points, boxes", "clinical text only", "Remove positive_points, boxes",
            "PromptTrainer")
    assert_no_output(out)
    assert _checksums(text_trained["raw"]) == before


def test_text_session_refuses_points(text_trained):
    """The interactive session says the same (set_text), rather than drawing clicks nobody reads."""
    from nnunet_prompt.inference.session import InteractiveSession
    s = InteractiveSession(text_trained["folder"], fold=0, device="cpu")
    s.set_image(os.path.join(text_trained["raw"], "imagesTs", _cases(text_trained)[0] + "_0000.nii.gz"))
    for interaction in (lambda: s.add_point((5, 5, 5)), lambda: s.add_box((2, 2, 2), (6, 6, 4))):
        with pytest.raises(ValueError, match="set_text"):
            interaction()

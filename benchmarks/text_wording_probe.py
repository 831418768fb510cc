"""How much of the frozen language model's sentence-level output says left or right, with one wording and with ten?

    python benchmarks/text_wording_probe.py [--out benchmarks/RESULTS.md]

Notes of the synthetic head-and-neck phantom (``clinical_note``: "fixed" = one template, "varied" = ten), half
left, half right, go through MiniLM-L6 (frozen). For each sentence-level output ([CLS], the mean and the max over
tokens, and the [SEG] outputs of ``TextPromptTuning`` at initialisation, group 0) after standardisation per dimension
(as the text trainers standardise): the share of the variance the side explains, and the accuracy of a
nearest-centroid read-out of the side, fitted on the first half of the notes and tested on the second half.
This is why the text trainers read the text's own tokens too (``TextTokenReadout``).
"""
from __future__ import annotations

import argparse
import datetime
import sys

import numpy as np


def side_statistics(x: np.ndarray, left: np.ndarray):
    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    half = len(z) // 2
    direction = z[:half][left[:half]].mean(0) - z[:half][~left[:half]].mean(0)
    threshold = 0.5 * ((z[:half][left[:half]] @ direction).mean() + (z[:half][~left[:half]] @ direction).mean())
    accuracy = float(((z[half:] @ direction > threshold) == left[half:]).mean())
    full = z[left].mean(0) - z[~left].mean(0)
    explained = float((full ** 2).sum() / 4 / z.var(0).sum())  # between-side variance / total variance
    return explained, accuracy


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--notes", type=int, default=160)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    import torch
    from common import report
    from nnunet_prompt_datasets.synthetic_hn import clinical_note
    from nnunet_prompt.text.language_model import DEFAULT_MODEL, TextModelSpec, load_frozen_language_model
    from nnunet_prompt.text.prompt_tuning import TextPromptTuning
    spec = TextModelSpec.from_source(DEFAULT_MODEL)
    tokenizer, model = load_frozen_language_model(spec)
    torch.manual_seed(0)
    tuning = TextPromptTuning(spec, num_groups=4, vectors_per_group=8)
    rng = np.random.default_rng(0)
    rows = []
    for wording in ("fixed", "varied"):
        sides = ["left", "right"] * (a.notes // 2)
        notes = [clinical_note(rng, s, f"T{rng.integers(1, 4)}", f"N{rng.integers(0, 2)}", wording) for s in sides]
        left = np.array([s == "left" for s in sides])
        batch = tokenizer(notes, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
            seg = tuning.encode(notes)[:, 0]
        mask = batch["attention_mask"][..., None].float()
        outputs = {"[CLS]": hidden[:, 0], "mean over tokens": (hidden * mask).sum(1) / mask.sum(1),
                   "max over tokens": hidden.masked_fill(mask == 0, -1e4).max(1).values,
                   "[SEG] at initialisation": seg}
        for name, x in outputs.items():
            explained, accuracy = side_statistics(x.numpy(), left)
            rows.append(f"| {wording} ({len(set(notes))} distinct notes) | {name} | {100 * explained:.1f} % | "
                        f"{100 * accuracy:.0f} % |")
    lines = [f"### What MiniLM-L6's sentence-level outputs say about the side, {datetime.date.today().isoformat()}", "",
             f"`python benchmarks/text_wording_probe.py`: {a.notes} phantom notes per wording, half left, half right; "
             "outputs standardised per dimension", "",
             "| wording | output | variance the side explains | held-out nearest-centroid accuracy |", "|---|---|---|---|",
             *rows]
    report(lines, a.out)


if __name__ == "__main__":
    sys.exit(main())

"""Multi-class datasets: a prompt addresses one label; per-label predictions merge into one label map."""
import json
import os

import numpy as np
import SimpleITK as sitk
import torch

from conftest import CONFIG, PLANS, console_script, make_tiny_dataset, run

TRAINER = "PromptTrainer_demo"


def test_two_labels_train_validate_and_predict(planned_dataset, tmp_path):
    env = dict(planned_dataset["env"], NNUNET_PROMPT_DEMO_EPOCHS="1", NNUNET_PROMPT_DEMO_ITERS="2")
    raw = make_tiny_dataset(env, 992, "TinyHN2", label_lookalikes=True)
    name = os.path.basename(raw)
    proc = run([console_script("nnUNetv2_train"), "992", CONFIG, "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"],
               env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    folder = os.path.join(env["nnUNet_results"], name, f"{TRAINER}__{PLANS}__{CONFIG}")
    val = os.path.join(folder, "fold_0", "validation")
    used = json.load(open(os.path.join(val, "simulated_prompts_rank0.json")))
    assert all(info["labels"] == [1, 2] for info in used.values()), used
    summary = json.load(open(os.path.join(val, "summary.json")))
    assert set(summary["mean"]) == {"1", "2"}

    from nnunet_prompt.interaction.user_prompts import prompt_from_label
    from nnunet_prompt.inference.predictor import UNPROMPTED_LOGIT, PromptPredictor
    from nnunet_prompt.prompts.model import Prompt
    case = sorted(f[:-7] for f in os.listdir(os.path.join(raw, "labelsTs")))[0]
    image = os.path.join(raw, "imagesTs", case + "_0000.nii.gz")
    label_file = os.path.join(raw, "labelsTs", case + ".nii.gz")
    prompts = [dict(prompt_from_label(label_file, label=value), label=name_)
               for value, name_ in ((1, "tumour"), (2, "lookalike"))]

    predictor = PromptPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, (0,), "checkpoint_final.pth")
    data, _, props = predictor.configuration_manager.preprocessor_class(verbose=False).run_case(
        [image], None, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json)
    data = torch.from_numpy(data)
    predictor.set_prompts({case: [Prompt.from_dict(prompts[1])]}, "test")
    only_2 = predictor.prepare_case_prompts(case, data.shape[1:], props)
    assert set(only_2) == {2}
    with torch.no_grad():
        logits = predictor.predict_prompted_logits(data, only_2)
    assert logits.shape[0] == 3 and torch.all(logits[1] == UNPROMPTED_LOGIT) and torch.all(logits[0] == 0)

    # both labels through the command line: one label map in the image's geometry
    pf = tmp_path / "prompts.json"
    pf.write_text(json.dumps({case: prompts}))
    inp = tmp_path / "in"
    inp.mkdir()
    os.symlink(image, inp / os.path.basename(image))
    proc = run([console_script("nnunet-prompt"), "predict", "-i", str(inp), "-o", str(tmp_path / "out"), "-d", "992",
                "-c", CONFIG, "-f", "0", "-tr", TRAINER, "-p", PLANS, "--prompts", str(pf), "-device", "cpu"], env)
    assert proc.returncode == 0, proc.stdout[-5000:]
    seg = sitk.ReadImage(str(tmp_path / "out" / (case + ".nii.gz")))
    assert seg.GetSize() == sitk.ReadImage(image).GetSize()
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}

"""Round trip: `nnunet-prompt convert` (the CLI) on a HECKTOR-layout folder, then nnU-Net's own
`nnUNetv2_plan_and_preprocess` on the result."""
import os
import subprocess

from conftest import console_script, nnunet_env
from test_convert_public import make_hecktor


def test_convert_then_plan_and_preprocess(tmp_path):
    env = nnunet_env(tmp_path)
    env.pop("nnUNet_n_proc_DA")      # 0 (single-process training loader) crashes nnU-Net's planning
    src = make_hecktor(tmp_path / "src")
    convert = subprocess.run([console_script("nnunet-prompt"), "convert", "hecktor", str(src), "--dataset-id", "611",
                              "--name", "RoundTrip", "-np", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert convert.returncode == 0, convert.stderr[-3000:]
    assert "Dataset611_RoundTrip" in convert.stdout
    again = subprocess.run([console_script("nnunet-prompt"), "convert", "hecktor", str(src), "--dataset-id", "611",
                            "--name", "RoundTrip"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists already" in again.stderr and "--overwrite" in again.stderr
    plan = subprocess.run([console_script("nnUNetv2_plan_and_preprocess"), "-d", "611", "-c", "3d_fullres", "-np", "1",
                           "-npfp", "1", "--verify_dataset_integrity"], env=env, capture_output=True, text=True, timeout=600)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    pre = os.path.join(env["nnUNet_preprocessed"], "Dataset611_RoundTrip")
    assert os.path.isfile(os.path.join(pre, "nnUNetPlans.json"))
    files = os.listdir(os.path.join(pre, "nnUNetPlans_3d_fullres"))
    assert any(f.startswith("CHUM-001") for f in files) and any(f.startswith("CHUP-002") for f in files)

"""Prompted prediction of a whole CT-sized volume against nnUNetv2_predict of the same model: time and peak memory.

    python benchmarks/full_size_predict.py --device cpu --out benchmarks/RESULTS.md
    python benchmarks/full_size_predict.py --device cuda --step-size 0.5 --out benchmarks/RESULTS.md

One random-weight PromptTrainer model (time and memory do not depend on the weights), planned by nnU-Net's
NarrowUNetPlanner on CT-like phantoms at 1 x 1 x 2.5 mm, predicts one generated 512 x 512 x 300 (x, y, z) volume
at the same spacing, twice, each in a fresh process:

- ``nnUNetv2_predict`` (nnU-Net's own command; the model's empty-prompt hook gives it zero prompt channels);
- ``nnunet-prompt predict`` with one prompt (a box and a click around the phantom's object);
- ``InteractiveSession``: load the model, ``set_image`` of the volume's file, one click (region growth off, as in
  click_reply.py: with random weights it would grow over the image), the changed box copied out.

Same sliding window (``--step-size``; 1.0 on a 2-core CPU keeps a run to minutes, 0.5 is nnU-Net's default),
no mirroring, one preprocessing and one export worker each. Peak memory is the largest sum of the proportional
set sizes (PSS: pages shared between processes, such as torch's libraries, split among them) over the command's
whole process tree (nnU-Net preprocesses and exports in worker processes), sampled every 0.2 s. Targets (issue
"Hold up at scale"): prompted time <= 1.2 x and peak memory <= 1.3 x nnUNetv2_predict's.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import nnunet_workdir, report  # noqa: E402
from session_latency import make_model_folder  # noqa: E402


def ct_like(shape_zyx, seed=0):
    """A CT-like float32 volume (z, y, x): a body ellipse of soft tissue in air, noise, one bright object."""
    rng = np.random.default_rng(seed)
    z, y, x = shape_zyx
    yy, xx = np.ogrid[:y, :x]
    body = ((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.46 * x)) ** 2 < 1
    img = np.full(shape_zyx, -1000.0, np.float32)
    img[:, body] = 40.0
    img += rng.normal(0, 15, size=shape_zyx).astype(np.float32)
    c, r = np.array([z // 2, y // 2, x // 3]), np.array([12, 30, 30])
    sl = tuple(slice(int(a - b), int(a + b)) for a, b in zip(c, r))
    g = np.ogrid[sl]
    ball = sum(((gi - ci) / ri) ** 2 for gi, ci, ri in zip(g, c, r)) < 1
    img[sl][ball] += 150.0
    return img, c, r


def run_measured(cmd, env):
    """(wall seconds, peak summed PSS of the process tree in GiB, output tail) of one command."""
    import psutil
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                rss = 0
                for p in procs:
                    try:  # PSS: shared pages (torch's libraries in every worker) counted once in the sum
                        rss += p.memory_full_info().pss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = proc.communicate()[0]
    done.set()
    t.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-4000:]}")
    return wall, peak[0] / 2 ** 30, out[-800:]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="300x512x512", help="z x y x x of the predicted volume (default 300x512x512)")
    ap.add_argument("--step-size", type=float, default=1.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--only-session", action="store_true", help="measure the InteractiveSession line only")
    ap.add_argument("--out", default=None, help="append the result table to this markdown file")
    a = ap.parse_args()

    import SimpleITK as sitk
    from nnunet_prompt.nnunet_env import trainer_path
    from nnunet_prompt_planners.narrow_planner import NarrowUNetPlanner

    work = nnunet_workdir(a.workdir)
    spacing = (1.0, 1.0, 2.5)
    folder, _, cm = make_model_folder(work, None, (160, 160, 48), spacing, dataset_id=997,
                                      planner=NarrowUNetPlanner, plans_name="nnUNetPlansNarrow")
    dataset = "Dataset997_Latency"
    model = os.path.join(os.environ["nnUNet_results"], dataset, "PromptTrainer__nnUNetPlansNarrow__3d_fullres")
    if os.path.isdir(model):
        shutil.rmtree(model)
    shutil.move(folder, model)

    shape = tuple(int(v) for v in a.size.split("x"))
    images = os.path.join(work, "full_size_images")
    os.makedirs(images, exist_ok=True)
    image_file = os.path.join(images, "ct_0000.nii.gz")
    img, c, r = ct_like(shape)
    if not os.path.isfile(image_file):
        itk = sitk.GetImageFromArray(img)
        itk.SetSpacing(spacing)
        sitk.WriteImage(itk, image_file)
    del img
    lo, hi = [int(v) for v in (c - r)[::-1]], [int(v) for v in (c + r)[::-1]]
    prompts = os.path.join(work, "full_size_prompts.json")
    with open(prompts, "w") as f:
        json.dump({"ct": {"boxes": [{"min": lo, "max": hi}], "positive_points": [[int(v) for v in c[::-1]]]}}, f)

    env = dict(os.environ, nnUNet_extTrainer=trainer_path(), nnUNet_compile="0", OMP_NUM_THREADS=str(os.cpu_count()))
    common = ["-i", images, "-d", "997", "-tr", "PromptTrainer", "-p", "nnUNetPlansNarrow", "-c", "3d_fullres",
              "-f", "0", "-step_size", str(a.step_size), "--disable_tta", "-npp", "1", "-nps", "1", "-device", a.device]
    bindir = os.path.dirname(sys.executable)
    session = ("import sys, time; from nnunet_prompt.inference.session import InteractiveSession; "
               "s = InteractiveSession(sys.argv[1], 0, sys.argv[2]); s.grow = False; t = time.perf_counter(); "
               "s.set_image(sys.argv[3]); "
               "t1 = time.perf_counter(); box = s.add_point(tuple(map(float, sys.argv[4:7])), return_mask=False); "
               "s.mask_in(box); print(f'set_image {t1 - t:.1f} s, click {time.perf_counter() - t1:.2f} s')")
    results = {}
    for name, cmd in (("nnUNetv2_predict", [os.path.join(bindir, "nnUNetv2_predict"), *common,
                                            "-o", os.path.join(work, "pred_plain")]),
                      ("nnunet-prompt predict", [os.path.join(bindir, "nnunet-prompt"), "predict", *common,
                                                 "-o", os.path.join(work, "pred_prompted"), "--prompts", prompts]),
                      ("session", [sys.executable, "-c", session, model, a.device, image_file,
                                   *[str(int(v)) for v in c[::-1]]])):
        if a.only_session and name != "session":
            continue
        for out in (os.path.join(work, "pred_plain"), os.path.join(work, "pred_prompted")):
            shutil.rmtree(out, ignore_errors=True)
        results[name] = run_measured(cmd, env)
        print(f"{name}: {results[name][0]:.1f} s, peak {results[name][1]:.2f} GiB", flush=True)

    ts, ms, out = results["session"]
    session_line = [line for line in out.splitlines() if line.startswith("set_image")][-1]
    session_row = f"| InteractiveSession: load, set_image, 1 click ({session_line}) | {ts:.1f} | {ms:.2f} |"
    if a.only_session:
        report([f"Full-size session, {datetime.date.today()}, {a.device}, volume {a.size}:", "", "| | wall time (s) | "
                f"peak memory (GiB) |", "|---|---|---|", session_row], a.out)
        return
    (tp, mp, _), (tq, mq, _) = results["nnUNetv2_predict"], results["nnunet-prompt predict"]
    lines = [f"### Full-size prediction, {datetime.date.today()}, {a.device} ({platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores)", "",
             f"Volume {a.size} (z x y x x) at 1 x 1 x 2.5 mm; model: random-weight PromptTrainer on NarrowUNetPlanner "
             f"plans (patch {list(cm.patch_size)}, spacing {list(cm.spacing)}); step size {a.step_size}, no mirroring, "
             f"`-npp 1 -nps 1`. Peak = largest summed PSS (proportional set size) of the command's process tree. "
             f"`benchmarks/full_size_predict.py`.", "",
             "| command | wall time (s) | peak memory (GiB) |", "|---|---|---|",
             f"| nnUNetv2_predict | {tp:.1f} | {mp:.2f} |",
             f"| nnunet-prompt predict (1 box + 1 click) | {tq:.1f} | {mq:.2f} |",
             f"| ratio (target <= 1.2 time, <= 1.3 memory) | {tq / tp:.2f} | {mq / mp:.2f} |",
             session_row]
    report(lines, a.out)


if __name__ == "__main__":
    main()

"""MedSAM inference latency: image encoding per slice and prompt encoding + mask decoding per box (issue 16).
The MedSAM study reports ~0.03 s per box per slice on a GPU.

    python benchmarks/medsam_box_latency.py --device cpu --out benchmarks/RESULTS.md       # tiny and vit_b
    python benchmarks/medsam_box_latency.py --device cuda --variants vit_b --reps 20         # GPU

No weights can be downloaded: the SAM is randomly initialised (latency depends on the sizes only). The
MedSAMNetwork's own forward is timed (box finding, pixel mapping, resize to the model input, one image
embedding, all boxes of the slice decoded at once, upsampling), for 1 and --boxes boxes on one slice; the
per-box time is the difference divided by the extra boxes, the image-encoding time the encoder alone.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch

from common import report


def _time(fn, reps, sync):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    from nnunet_prompt.prompts.encoding import BOX
    from nnunet_prompt.sam.full_model import sam_config, tiny_sam_config
    from nnunet_prompt.sam.medsam_network import build_medsam_network

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="+", default=["tiny", "vit_b"])
    p.add_argument("--patch", type=int, default=512, help="planned 2D patch S (resized to the model's 1024)")
    p.add_argument("--boxes", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for variant in args.variants:
        config = tiny_sam_config(64) if variant == "tiny" else sam_config(variant)
        size = config.vision_config.image_size
        patch = 32 if variant == "tiny" else args.patch
        torch.manual_seed(0)
        net = build_medsam_network(config, None, "unit", ["CTNormalization"], {"0": {"mean": 0.0, "std": 1.0}})
        net = net.to(device).eval()
        x = torch.randn(1, 5, patch, patch, device=device)
        x[:, 1:] = 0
        one, many = x.clone(), x.clone()
        step = patch // (2 * args.boxes)
        one[0, 1 + BOX, step // 2:step, step // 2:step] = 1
        for i in range(args.boxes):  # separate boxes along the diagonal
            lo = i * 2 * step + step // 2
            many[0, 1 + BOX, lo:lo + step // 2, lo:lo + step // 2] = 1
        pixels = net._pixels(x[:, :1])
        with torch.inference_mode():
            t_enc = _time(lambda: net.sam.vision_encoder(pixels), args.reps, sync)
            t_one = _time(lambda: net(one), args.reps, sync)
            t_many = _time(lambda: net(many), args.reps, sync)
        per_box = (t_many - t_one) / (args.boxes - 1)
        n_params = sum(q.numel() for q in net.parameters()) / 1e6
        rows.append(f"| {variant} ({n_params:.1f}M) | {patch} -> {size} | {t_enc:.3f} | {t_one:.3f} | {t_many:.3f} | "
                    f"{per_box:.4f} |")
    cpu = f"{platform.machine()}, {os.cpu_count()} cores"
    lines = [f"### MedSAM box latency, {datetime.date.today().isoformat()}, {device.type} ({cpu})", "",
             f"`python benchmarks/medsam_box_latency.py --device {args.device} --variants {' '.join(args.variants)} "
             f"--boxes {args.boxes} --reps {args.reps}`; median of {args.reps} runs after one warm-up, random "
             f"weights, inference mode, float32.", "",
             f"| model | patch -> input | image encoding s / slice | forward, 1 box (s) | forward, {args.boxes} boxes "
             f"(s) | decoding s / extra box |", "|---|---|---|---|---|---|", *rows]
    report(lines, args.out)


if __name__ == "__main__":
    main()

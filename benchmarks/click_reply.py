"""Click -> reply time, in-process and over HTTP, against the network's own time, for growing volumes.

    python benchmarks/click_reply.py --device cpu --out benchmarks/RESULTS.md
    python benchmarks/click_reply.py --device cuda --sizes 64x64x64 300x512x512

What a click costs should grow with the region the network sees, not with the image. For each image
size (z x y x x) this measures, on one random-weight PromptTrainer model (latency does not depend on the
weights), the median over ``--clicks`` clicks after ``--warmup`` warm-up clicks of:

- network: the session's ``last_network_ms`` (nnU-Net's sliding window on the click's region);
- in-process reply: ``InteractiveSession.add_point(return_mask=False)`` + ``mask_in(changed box)``, i.e.
  the prompt encoding, the network, bringing the region back to the image grid and copying it out;
- HTTP reply: nninteractive-client's ``add_point_interaction`` against ``nnunet-prompt serve`` on loopback,
  until the changed box is written into the client's target buffer (what 3D Slicer and napari wait for),
  against the server's own network time (its ``Server-Timing`` header).

The model is planned by nnU-Net on CT-like phantoms (0.8 x 0.8 x 2.5 mm); the images have 0.7 mm pixels, so
every reply goes through the resampling back to the image grid (``--image-spacing 0.8 0.8 2.5`` for the
identity case). Region growth (autozoom) is off so that every click is one patch. Target: both replies
<= 1.3 x the network time at every size.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np

from common import nnunet_workdir, report
from session_latency import make_model_folder


def phantom(shape_zyx, seed=0) -> np.ndarray:
    """CT-like numbers, float32 (z, y, x): soft tissue with noise and a bright sphere in the middle."""
    rng = np.random.default_rng(seed)
    img = rng.normal(40.0, 20.0, size=shape_zyx).astype(np.float32)
    c = np.asarray(shape_zyx) // 2
    r = max(4, min(shape_zyx) // 6)
    z, y, x = np.ogrid[tuple(slice(int(a - r), int(a + r)) for a in c)]
    ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r
    img[tuple(slice(int(a - r), int(a + r)) for a in c)][ball] += 200.0
    return img


def clicks(shape_zyx, n, seed=1):
    """Click positions (z, y, x) away from the borders."""
    rng = np.random.default_rng(seed)
    lo = [s // 4 for s in shape_zyx]
    hi = [max(l + 1, s - s // 4) for s, l in zip(shape_zyx, lo)]
    return [tuple(int(rng.integers(a, b)) for a, b in zip(lo, hi)) for _ in range(n)]


def in_process(folder, image, spacing_xyz, points, warmup, device):
    from nnunet_prompt.inference.session import InteractiveSession
    s = InteractiveSession(folder, fold=0, device=device)
    s.grow = False
    t0 = time.perf_counter()
    s.set_image(image, spacing=spacing_xyz)
    set_image_s = time.perf_counter() - t0
    reply, network = [], []
    for i, (z, y, x) in enumerate(points):
        t0 = time.perf_counter()
        box = s.add_point((x, y, z), return_mask=False)
        s.mask_in(box)
        if i >= warmup:
            reply.append(1000 * (time.perf_counter() - t0))
            network.append(s.last_network_ms)
    preprocessed = tuple(int(v) for v in s._grid.shape)
    del s
    return statistics.median(reply), statistics.median(network), set_image_s, preprocessed


def start_server(folder, device):
    from nnunet_prompt.serve.launch import start_server as launch
    return launch(folder, "0", device, ["--log-level", "warning"], capture_output=False, timeout_s=300)


def over_http(url, image, spacing_xyz, points, warmup):
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession
    remote = nnInteractiveRemoteInferenceSession(url, read_timeout=600, set_image_read_timeout=3600, write_timeout=600)
    try:
        remote.set_do_autozoom(False)
        t0 = time.perf_counter()
        remote.set_image(image[None], {"spacing": list(spacing_xyz[::-1])})
        remote.set_target_buffer(np.zeros(image.shape, np.uint8))
        set_image_s = time.perf_counter() - t0
        timings = []  # the server's own network time, from its Server-Timing header
        remote._http.event_hooks["response"].append(lambda r: timings.append(r.headers.get("Server-Timing")))
        reply, network = [], []
        for i, p in enumerate(points):
            t0 = time.perf_counter()
            remote.add_point_interaction(list(p), include_interaction=True)
            if i >= warmup:
                reply.append(1000 * (time.perf_counter() - t0))
                network.append(float(timings[-1].split("network;dur=")[1].split(",")[0]))
        return statistics.median(reply), statistics.median(network), set_image_s
    finally:
        remote.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cuda", "cpu"])
    p.add_argument("--sizes", nargs="+", default=["64x64x64", "128x128x128", "150x512x512", "300x512x512"],
                   help="image sizes z x y x x (default: %(default)s)")
    p.add_argument("--image-spacing", type=float, nargs=3, default=(0.7, 0.7, 2.5), metavar=("X", "Y", "Z"),
                   help="the images' spacing in mm; the model is planned at 0.8 x 0.8 x 2.5 (default: %(default)s)")
    p.add_argument("--phantom", type=int, nargs=3, default=(96, 96, 32), metavar=("X", "Y", "Z"),
                   help="size of the phantoms nnU-Net plans the model on; its patch and U-Net follow (default: %(default)s)")
    p.add_argument("--clicks", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-http", action="store_true", help="in-process only")
    p.add_argument("--out", default=None, help="append the markdown result to this file")
    a = p.parse_args(argv)

    work = nnunet_workdir()
    import torch
    folder, _, cm = make_model_folder(work, None, a.phantom, (0.8, 0.8, 2.5), dataset_id=995)
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes]
    rows = {}
    for shape in sizes:  # in-process first, then the server, so that they never share the cores
        print(f"in-process {shape} ...", flush=True)
        points = clicks(shape, a.warmup + a.clicks)
        rows[shape] = list(in_process(folder, phantom(shape), a.image_spacing, points, a.warmup, a.device))
    if not a.no_http:
        proc, url = start_server(folder, a.device)
        try:
            for shape in sizes:
                print(f"over HTTP {shape} ...", flush=True)
                points = clicks(shape, a.warmup + a.clicks)
                rows[shape] += list(over_http(url, phantom(shape), a.image_spacing, points, a.warmup))
        finally:
            proc.terminate()
            proc.wait(60)

    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    patch = "x".join(map(str, cm.patch_size))
    lines = [f"### Click -> reply, {datetime.date.today().isoformat()}, {dev}", "",
             f"`python benchmarks/click_reply.py --device {a.device} --sizes {' '.join(a.sizes)} --image-spacing "
             f"{' '.join(map(str, a.image_spacing))} --phantom {' '.join(map(str, a.phantom))} --clicks {a.clicks}`; torch {torch.__version__}; random-weight "
             f"PromptTrainer planned at 0.8 x 0.8 x 2.5 mm, patch {patch} (z, y, x), U-Net features "
             f"{cm.network_arch_init_kwargs['features_per_stage']}, no mirroring, autozoom off; "
             f"median of {a.clicks} clicks after {a.warmup} warm-up", "",
             "| image (z x y x x) | preprocessed | set_image s (in-process / HTTP) | network ms | in-process reply ms "
             "| ratio | server's network ms | HTTP reply ms | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for shape, r in rows.items():
        reply, network, set_s, pre = r[:4]
        http = f"{r[5]:.0f} | {r[4]:.0f} | {r[4] / r[5]:.2f}" if len(r) > 4 else "- | - | -"
        http_set = f" / {r[6]:.1f}" if len(r) > 4 else ""
        lines.append(f"| {'x'.join(map(str, shape))} | {'x'.join(map(str, pre))} | {set_s:.1f}{http_set} | "
                     f"{network:.0f} | {reply:.0f} | {reply / network:.2f} | {http} |")
    report(lines, a.out)


if __name__ == "__main__":
    sys.exit(main())

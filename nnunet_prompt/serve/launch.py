"""Start `nnunet-prompt serve` as a child process on a free loopback port and wait until it answers /healthz.

For scripts and tests that drive the server as a viewer would (benchmarks/click_reply.py, tests/test_serve.py).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence, Tuple


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_folder: str, fold: str = "0", device: str = "cpu", extra: Sequence[str] = (),
                 env: Optional[dict] = None, timeout_s: float = 300.0,
                 capture_output: bool = True) -> Tuple[subprocess.Popen, str]:
    """(the server process, its URL). The caller stops it (``proc.kill()``). With ``capture_output`` its output is
    kept in ``proc.stdout`` (and shown if it exits before answering); otherwise it is discarded."""
    import httpx
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-prompt")
    proc = subprocess.Popen([exe if os.path.exists(exe) else "nnunet-prompt", "serve", model_folder, "-f", str(fold),
                             "--device", device, "--port", str(port), *extra], env=env,
                            stdout=subprocess.PIPE if capture_output else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read()[-4000:] if capture_output else ""
            raise RuntimeError(f"nnunet-prompt serve exited with code {proc.returncode}: {output}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"nnunet-prompt serve did not answer on {url} within {timeout_s:.0f} s")

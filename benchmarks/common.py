"""Shared by the benchmark scripts: a throw-away nnU-Net folder tree, and writing a result table."""
import os
import tempfile


def nnunet_workdir(path=None) -> str:
    """Point nnUNet_raw/_preprocessed/_results at folders under ``path`` (a new temporary folder by default)."""
    work = path or tempfile.mkdtemp(prefix="nnunet_prompt_bench_")
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[k] = os.path.join(work, k)
        os.makedirs(os.environ[k], exist_ok=True)
    return work


def report(lines, out=None) -> None:
    """Print a markdown result and append it to ``out`` (benchmarks/RESULTS.md) when given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "a") as f:
            f.write("\n" + text)

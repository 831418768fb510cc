#!/usr/bin/env bash
# Every GPU check the open issues ask for, in one batch (a session's device time is short: run this once).
#
#   bash benchmarks/gpu_checks.sh [OUTDIR]     # default: $OUT (the device tool's folder) or gpu_results/
#
# Each script prints a markdown table and writes it, with date and device, to OUTDIR/<name>.md; copy the
# tables into benchmarks/RESULTS.md. A failing script does not stop the others (its log says why).
# Rough order of importance: foundation step time, session latency, PSAP, SAM LoRA, SAM adapter 3D.
set -u
OUTDIR="${1:-${OUT:-gpu_results}}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-python}"
cd "$(dirname "$0")/.."
run() {  # name, then the command
    local name="$1"; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    "$@" --out "$OUTDIR/$name.md" >"$OUTDIR/$name.log" 2>&1
    echo "    exit $? after $((SECONDS - t0)) s (log: $OUTDIR/$name.log)"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUTDIR/device.txt" 2>&1
# foundation (PromptTrainer), PSAPTrainer (issue 5) and TextPromptTrainer (issue 6) next to nnUNetTrainer
run trainer_step $PY benchmarks/trainer_step.py --device cuda --plans default --iters 200
# per-click latency of the interactive session (targets 60 / 160 ms at 128^3 / 192^3)
run session_latency $PY benchmarks/session_latency.py --device cuda --patch 128 192 --clicks 30
# issue 13: click -> reply in-process and over HTTP (nnunet-prompt serve), 64^3 .. 300x512x512
run click_reply $PY benchmarks/click_reply.py --device cuda --clicks 10
# issue 7: ViT-B SAM with LoRA at 512 px next to nnU-Net's 2D U-Net
run sam_lora_step $PY benchmarks/sam_lora_step.py --device cuda --size 512 --iters 300
# issue 8: 3D-adapted ViT-B at 128^3, DistillTrainer, teacher vs student inference
run sam_adapter3d_step $PY benchmarks/sam_adapter3d_step.py --device cuda --iters 50
# issue 15: whole 512x512x300 volume, nnunet-prompt predict vs nnUNetv2_predict (nnU-Net's step 0.5), and the session
run full_size_predict $PY benchmarks/full_size_predict.py --device cuda --step-size 0.5
# issue 15: nnUNetv2_train -num_gpus 2 (and --c) for PromptTrainer, PSAPTrainer_CPP, TextPromptTrainer.
# NEEDS 2 GPUs (nnU-Net's DDP is CUDA/NCCL only); skipped on a one-GPU machine.
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
    bash benchmarks/ddp_2gpu.sh "$OUTDIR/ddp_2gpu"
else
    echo "=== ddp_2gpu: skipped (needs >= 2 GPUs)"
fi

#!/usr/bin/env bash
# Multi-GPU checks (issue 15). NEEDS A MACHINE WITH >= 2 CUDA GPUs: nnU-Net's -num_gpus is CUDA/NCCL only.
# Not run on the 2-core CI (tests/test_ddp.py covers the same code path on CPU with gloo).
#
#   bash benchmarks/ddp_2gpu.sh [OUTDIR]
#
# What it does, with nnU-Net's own commands: a synthetic dataset (with clinical text) planned with nnU-Net's
# default planner (3d_fullres batch 2, so each of the 2 ranks gets 1 case), then per trainer
#   nnUNetv2_train 990 3d_fullres 0 -tr <T> -num_gpus 2            (2 epochs of 50 iterations + final validation)
#   nnUNetv2_train 990 3d_fullres 0 -tr <T> -num_gpus 2 --c        (resumed to 3 epochs: same random streams)
# and greps each log for the failure DDP gives when a parameter gets no gradient. A pass: every line "exit 0".
set -u
OUTDIR="$(realpath -m "${1:-${OUT:-gpu_results}/ddp_2gpu}")"
mkdir -p "$OUTDIR"
cd "$(dirname "$0")/.."
export nnUNet_raw="$OUTDIR/raw" nnUNet_preprocessed="$OUTDIR/preprocessed" nnUNet_results="$OUTDIR/results"
export nnUNet_extTrainer="$(nnunet-prompt trainer-path)" nnUNet_compile=0
export NNUNET_PROMPT_DEMO_EPOCHS=2 NNUNET_PROMPT_DEMO_ITERS=50
python -c "from nnunet_prompt_datasets.synthetic_hn import generate_synthetic_hn_dataset as g; \
g('$nnUNet_raw', 990, 'DDPCheck', num_training=20, num_test=2, nodal_involvement=0.5, overwrite=True)"
nnUNetv2_plan_and_preprocess -d 990 -c 3d_fullres -np 4 -npfp 4 >"$OUTDIR/plan.log" 2>&1 || echo "planning failed"
for T in PromptTrainer_demo PSAPTrainer_CPP_demo TextPromptTrainer_demo; do
    for resume in "" "--c"; do
        [ -n "$resume" ] && export NNUNET_PROMPT_DEMO_EPOCHS=3
        log="$OUTDIR/$T${resume:+_resumed}.log"
        t0=$SECONDS
        nnUNetv2_train 990 3d_fullres 0 -tr "$T" -num_gpus 2 $resume >"$log" 2>&1
        echo "$T ${resume:-fresh}: exit $? after $((SECONDS - t0)) s (log: $log)"
        grep -l "did not receive grad\|find_unused_parameters" "$log" && echo "    ^ a parameter without gradient"
    done
    export NNUNET_PROMPT_DEMO_EPOCHS=2
done | tee "$OUTDIR/summary.txt"

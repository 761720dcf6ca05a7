#!/usr/bin/env bash
# One check of mmtune on a lent GPU (an H200: no network, under 10 minutes), results in
# $OUT/gpu_check.json: bf16 tiny LLaVA learns; QLoRA through bitsandbytes on CUDA with paged
# 8-bit AdamW; a ~1B-parameter LLaVA finetune step (time, MFU, peak memory vs `mmtune plan`);
# FSDP through the shipped fsdp.yaml on one GPU. Details: benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--only llava_bf16,step_1b] [--dry-run]
#
# Run from the repository root in an environment with mmtune's test install. --dry-run runs
# the same commands at toy sizes on CPU (tests/test_gpu_check.py). Exit status 0: all checks ok.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing is downloaded: every model is built from a config
exec timeout 590 python benchmarks/gpu_check.py --out "${OUT:-runs}/gpu_check" "$@"

#!/usr/bin/env bash
# The checks that need a GPU: the CUDA tests, then the memory benchmark under bf16 autocast.
# Needs python3 with torch, pydantic, tokenizers, safetensors, rich, matplotlib, pytest and transformers.
#     bench/gpu_check.sh [OUT_DIR]        (default runs/gpu)
set -u
out=${1:-runs/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$out/gpu.txt"

timeout "${CUDA_TESTS_TIMEOUT:-240}" python3 -m pytest --noconftest -q -p no:cacheprovider tests/test_cuda.py \
    >"$out/test_cuda.log" 2>&1
echo "tests/test_cuda.py exit status $?"
tail -n 40 "$out/test_cuda.log"

rows=hf-gpt2,memlm-baseline,memlm-default,memlm-best-adamw,memlm-best-any,hf-gpt2-ckpt,memlm-ckpt-full
rows+=,memlm-ckpt-selective,memlm-chunked-loss,memlm-accum-2x4,memlm-adafactor,memlm-opt-in-backward
rows+=,memlm-tiled-mlp,memlm-fp16-mixed,memlm-offload
timeout "${BENCH_TIMEOUT:-300}" python3 bench/memory.py --precision bf16-mixed --steps 12 --rows "$rows" \
    --json "$out/memory-bf16.json" >"$out/memory-bf16.txt" 2>"$out/memory-bf16.err"
echo "bench/memory.py exit status $?"
cat "$out/memory-bf16.txt"
tail -n 5 "$out/memory-bf16.err"

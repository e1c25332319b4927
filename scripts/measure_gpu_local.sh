#!/usr/bin/env bash
# The local-device benchmark's 160 test models on this machine's GPU (torch eager), with
# NVML energy, at batch 32 and then batch 1; the CSVs (with provenance) are copied to OUT_DIR.
# Energy windows of 1 s after 0.5 s of settling (`predictor.energy`; about 3.5 s per model,
# 9-10 min per batch size): 0.4 s windows without settling repeated only within 16-27 %
# on an H200 (`results/gpu/stop26_energy_windows/`).
#     bash scripts/measure_gpu_local.sh OUT_DIR [SECONDS_PER_BATCH]
# Then, on any machine, with the CSVs in datasets/cache/local_device/seed20261126/:
#     python scripts/benchmark_local_device.py --runtime torch-cuda-b32 [--metric energy_mj]
set -uo pipefail
out=$(realpath -m "${1:?usage: measure_gpu_local.sh OUT_DIR [SECONDS_PER_BATCH]}")
limit=${2:-600}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.draw,clocks.sm,temperature.gpu --format=csv \
    | tee "$out/nvidia-smi.txt"
for runtime in torch-cuda-b32 torch-cuda; do
    start=$SECONDS
    timeout "$limit" python3 scripts/benchmark_local_device.py --runtime "$runtime" \
        --measure-only --remeasure --max-seconds 0.3 --energy-seconds 1.0 2>>"$out/stderr.log"
    echo "$runtime: exit $? after $((SECONDS - start)) s"
    cp datasets/cache/local_device/seed*/"$runtime"-100cnn-60tf.csv "$out/" 2>/dev/null
done
tail -c 3000 "$out/stderr.log" | tr '\r' '\n' | tail -5

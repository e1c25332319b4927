#!/usr/bin/env bash
# The local-device benchmark's 160 test models on this machine's GPU (torch eager), one
# RUNTIME[:ENERGY_SECONDS] after another (default: batch 32 then batch 1, both with NVML
# energy in 1 s windows); the CSVs (with provenance) are copied to OUT_DIR.
# Energy windows follow 0.5 s of settling (`predictor.energy`; with 1 s windows about 3.5 s
# per model, 9-10 min per batch size): 0.4 s windows without settling repeated only within
# 16-27 % on an H200 (`results/gpu/stop26_energy_windows/`). A runtime without
# `:SECONDS` is timed without energy (50-70 s for the 160 models).
#     bash scripts/measure_gpu_local.sh OUT_DIR [SECONDS_PER_RUNTIME] [RUNTIME[:SECONDS] ...]
#     e.g. bash scripts/measure_gpu_local.sh out 420 torch-cuda torch-cuda-b32:0.5
# Then, on any machine, with the CSVs in datasets/cache/local_device/seed20261126/:
#     python scripts/benchmark_local_device.py --runtime torch-cuda-b32 [--metric energy_mj]
set -uo pipefail
out=$(realpath -m "${1:?usage: measure_gpu_local.sh OUT_DIR [SECONDS_PER_RUNTIME] [RUNTIME[:SECONDS] ...]}")
limit=${2:-600}
shift $(($# >= 2 ? 2 : $#))
(($#)) || set -- torch-cuda-b32:1.0 torch-cuda:1.0
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.draw,clocks.sm,temperature.gpu --format=csv \
    | tee "$out/nvidia-smi.txt"
for item in "$@"; do
    runtime=${item%%:*}
    energy=()
    [[ $item == *:* ]] && energy=(--energy-seconds "${item#*:}")
    start=$SECONDS
    timeout "$limit" python3 scripts/benchmark_local_device.py --runtime "$runtime" \
        --measure-only --remeasure --max-seconds 0.3 "${energy[@]}" 2>>"$out/stderr.log"
    echo "$item: exit $? after $((SECONDS - start)) s"
    cp datasets/cache/local_device/seed*/"$runtime"-100cnn-60tf.csv "$out/" 2>/dev/null
done
tail -c 3000 "$out/stderr.log" | tr '\r' '\n' | tail -5

#!/usr/bin/env bash
# Model sets timed on this machine's GPU (torch eager, no energy), one `SET:CONFIG` pair
# after another, within a deadline; each finished CSV is packed into OUT_DIR/sets.tar.gz.
#     bash scripts/measure_gpu_sets.sh OUT_DIR DEADLINE_S SET:CONFIG [SET:CONFIG ...]
# e.g. bash scripts/measure_gpu_sets.sh out 540 zoo1:torch-cuda-b32 zoo3:torch-cuda
set -uo pipefail
out=$(realpath -m "${1:?usage: measure_gpu_sets.sh OUT_DIR DEADLINE_S SET:CONFIG ...}")
deadline=${2:?deadline in seconds}
shift 2
mkdir -p "$out/sets"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.draw,clocks.sm,temperature.gpu --format=csv \
    | tee "$out/sets/nvidia-smi.txt"
for pair in "$@"; do
    set_name=${pair%%:*} config=${pair#*:}
    left=$((deadline - SECONDS))
    if ((left < 20)); then echo "$pair: skipped, ${left} s left"; continue; fi
    start=$SECONDS
    timeout "$left" python3 -m predictor.cli data model-set measure "$set_name" \
        --config "$config" --max-seconds 0.3 2>>"$out/sets/stderr.log"
    echo "$pair: exit $? after $((SECONDS - start)) s"
    mkdir -p "$out/sets/$set_name"
    cp datasets/model_sets/"$set_name"/*-"$config".csv "$out/sets/$set_name/" 2>/dev/null
    tar -czf "$out/sets.tar.gz" -C "$out" sets
done
tail -c 2000 "$out/sets/stderr.log" | tr '\r' '\n' | tail -4

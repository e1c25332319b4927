#!/usr/bin/env bash
# Stop 37: the issue figures that "auto" can move, re-measured with candidate H (same checkpoint).
set -uo pipefail
cd /work/main
tag="(stop 37: H, auto moves to mix-free members beyond the op mix)"
run() {  # run OUT.txt COMMAND...
    local out=$1; shift
    local t0=$(date +%s)
    { echo "\$ $* $tag"; "$@" 2>&1 | tr '\r' '\n' | grep -v -e 'it/s\]' -e 'model/s\]' -e 'it/s$'; } > "$out.tmp"
    echo "seconds (wall, whole command): $(( $(date +%s) - t0 ))" >> "$out.tmp"
    mv "$out.tmp" "$out"; echo "wrote $out ($(( $(date +%s) - t0 )) s)"
}
run results/adapt.txt python scripts/benchmark_adapt.py
run results/nb201_k10.txt python scripts/benchmark_fewshot.py --space nb201 --shots 10 --seeds 5 --json results/nb201_k10.json
run results/fbnet_F0_k10.txt python scripts/benchmark_fewshot.py --space fbnet --shots 10 --seeds 5 --no-scratch --json results/fbnet_F0_k10.json
run results/local_device.txt python scripts/benchmark_local_device.py --measurements results/local_device_measurements.csv --json results/local_device.json
run results/local_device_picked.txt python scripts/benchmark_local_device.py --measurements results/local_device_measurements.csv --picked --json results/local_device_picked.json
run results/local_device_blocks.txt python scripts/benchmark_local_device.py --blocks --measurements results/local_device_blocks_measurements.csv --json results/local_device_blocks.json
run results/openvino/local_device_ov-1t.txt python scripts/benchmark_local_device.py --runtime ov-1t --measurements results/openvino/local_device_measurements_ov-1t.csv --json results/openvino/local_device_ov-1t.json
run results/openvino/local_device_ov-1t_picked.txt python scripts/benchmark_local_device.py --runtime ov-1t --measurements results/openvino/local_device_measurements_ov-1t.csv --picked --json results/openvino/local_device_ov-1t_picked.json
run results/known_models.txt python scripts/benchmark_known_models.py --measurements results/known_models_measurements/ort-1t-ref2.csv --json results/known_models.json
run results/openvino/known_models_ov-1t.txt python scripts/benchmark_known_models.py --runtime ov-1t --measurements results/known_models_measurements/ov-1t-ref2.csv --json results/openvino/known_models_ov-1t.json
run results/known_models_r512.txt python scripts/benchmark_known_models.py --resolution 512 --measurements results/known_models_measurements/ort-1t-ref2-r512.csv --json results/known_models_r512.json
run results/runtime_transfer.txt python scripts/benchmark_runtime_transfer.py
run results/default_devices.txt python scripts/benchmark_default_devices.py
g=results/gpu/stop29_h200
mkdir -p $g/stop37
run $g/stop37/local_device_torch-cuda.txt python scripts/benchmark_local_device.py --runtime torch-cuda --measurements $g/torch-cuda-pass1.csv $g/torch-cuda-pass2.csv $g/torch-cuda-pass3.csv --json $g/stop37/local_device_torch-cuda.json
run $g/stop37/local_device_torch-cuda-b32.txt python scripts/benchmark_local_device.py --runtime torch-cuda-b32 --measurements $g/torch-cuda-b32-pass1-energy.csv $g/torch-cuda-b32-pass2.csv $g/torch-cuda-b32-pass3.csv --json $g/stop37/local_device_torch-cuda-b32.json
run $g/stop37/known_torch-cuda.txt python scripts/benchmark_known_models.py --runtime torch-cuda --measurements $g/torch-cuda-ref2.csv --json $g/stop37/known_torch-cuda.json
run $g/stop37/known_torch-cuda-b32.txt python scripts/benchmark_known_models.py --runtime torch-cuda-b32 --measurements $g/torch-cuda-b32-ref2.csv --json $g/stop37/known_torch-cuda-b32.json
run results/constrained_search_nb201_accuracy.txt python scripts/benchmark_constrained_search.py --objective accuracy --json results/constrained_search_nb201_accuracy.json
echo done

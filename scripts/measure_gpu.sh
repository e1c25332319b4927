#!/usr/bin/env bash
# The GPU measurements behind the datasets and the README, on a machine with an NVIDIA GPU
# (PyTorch with CUDA and nvidia-ml-py installed; ONNX Runtime's CUDA provider not needed):
#   1. repeatability of latency and NVML energy: 20 generated models, 3 passes;
#   2. `latpred calibrate --measure --backend torch --device-kind cuda` (reference set);
#   3. the local-device benchmark's test models under torch eager on the GPU (an unseen device);
#   4. model sets zoo1 and zoo2 under the `torch-cuda` runtime config (meta-training data).
# Results are packed into OUT_DIR/gpu.tar.gz after every step.
#     bash scripts/measure_gpu.sh OUT_DIR
set -uo pipefail  # no -e: a failed step is reported, and the next steps still run
out=$(realpath -m "${1:?usage: measure_gpu.sh OUT_DIR}")
work="$out/gpu"
mkdir -p "$work"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export LATPRED_DEVICE_DIR="$work/devices"
log="$work/stderr.log"  # progress bars and errors; its end is shown if a step fails
pack() { tar -czf "$out/gpu.tar.gz" -C "$out" gpu; }
trap 'echo "step failed; end of $log:"; tail -c 4000 "$log"; pack' ERR

nvidia-smi --query-gpu=name,driver_version,power.draw,clocks.sm,temperature.gpu --format=csv \
    | tee "$work/nvidia-smi.txt"
python3 scripts/benchmark_measurement.py --device cuda --backend torch --models 20 --repeats 3 \
    --energy --max-seconds 0.5 --json "$work/gpu_measurement.json" 2>>"$log" | tee "$work/gpu_measurement.txt"
pack
python3 -m predictor.cli calibrate gpu-torch --measure --backend torch --device-kind cuda \
    --json > "$work/calibrate.json" 2>>"$log"
pack
python3 scripts/benchmark_local_device.py --runtime torch-cuda --measure-only --max-seconds 0.5 \
    2>>"$log"
cp datasets/cache/local_device/seed*/torch-cuda-*.csv "$work/"
pack
for set in zoo1 zoo2; do
    python3 -m predictor.cli data model-set measure "$set" --config torch-cuda --max-seconds 0.5 \
        2>>"$log"
    mkdir -p "$work/$set" && cp datasets/model_sets/"$set"/*-torch-cuda.csv "$work/$set/"
    pack
done
echo "done: $out/gpu.tar.gz"

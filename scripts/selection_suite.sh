#!/usr/bin/env bash
# Selection suite: every benchmark that chooses between checkpoints or settings, on
# selection data only (HELP's meta-valid devices, the model sets' valid devices, this
# CPU's non-held-out runtimes for the well-known networks, HW-NAS-Bench-360). Never a test
# device or the held-out runtime.
#
#   bash scripts/selection_suite.sh CKPT DEVICE_DIR OUT_DIR      # about 25 min on 2 cores
#   DRY=1 bash scripts/selection_suite.sh CKPT DEVICE_DIR OUT_DIR   # print the commands
#
# CKPT: the candidate checkpoint; DEVICE_DIR: its exported training devices
# (`latpred train ... --export-devices DIR`); OUT_DIR receives one .txt per run, named as
# in results/valid/stop29/*/ so that candidates compare file by file.
set -euo pipefail
ckpt=${1:?checkpoint}; devices=${2:?device dir}; out=${3:?output dir}
mkdir -p "$out"
export LATPRED_DEVICE_DIR=$devices

run() {  # run FILE COMMAND...: the command's output (progress bars dropped) into OUT/FILE
    local file=$1; shift
    if [[ -n ${DRY:-} ]]; then echo "$* > $out/$file"; return; fi
    echo "$ $*" > "$out/$file"
    "$@" 2>&1 | grep -v -e 'it/s\]' -e 'model/s\]' >> "$out/$file"
    echo "wrote $out/$file"
}

for set_device in zoo1/epyc-torch-1t zoo2/epyc-torch-1t zoo2/h200-torch-cuda \
                  zoo2/h200-torch-cuda-b32 zoo5/epyc-torch-1t zoo6/epyc-torch-1t \
                  zoo7/epyc-torch-1t zoo8/epyc-torch-1t zoo9/epyc-torch-1t \
                  zoo1/epyc-ov-1t zoo8/epyc-ov-1t; do  # OpenVINO: a fused runtime (stop 37)
    run "local_${set_device/\//_}.txt" python scripts/benchmark_local_device.py \
        --valid "$set_device" --seeds 20 --checkpoint "$ckpt"
done
for runtime in torch-1t ort-2t ort-noopt-1t; do
    run "known_$runtime.txt" python scripts/benchmark_known_models.py --runtime "$runtime" \
        --measurements "results/known_models_measurements/$runtime-ref2.csv" --checkpoint "$ckpt"
done
# image networks at 512 x 512, beyond the generator's 32..224 (stop 35)
run known_torch-1t_r512.txt python scripts/benchmark_known_models.py --runtime torch-1t \
    --resolution 512 --measurements results/known_models_measurements/torch-1t-ref2-r512.csv \
    --checkpoint "$ckpt"
for space in nb201 fbnet; do
    run "$space.txt" python scripts/benchmark_fewshot.py --space "$space" --shots 10 --seeds 3 \
        --valid --no-scratch --checkpoint "$ckpt"
done
run hw.txt python scripts/benchmark_strategies.py --devices hw --strategies auto --shots 10 \
    --seeds 5 --checkpoint "$ckpt"
run search.txt python scripts/benchmark_constrained_search.py --valid --objective accuracy \
    --checkpoint "$ckpt"

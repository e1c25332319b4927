#!/bin/bash
# Stop 43: the generic sets (zoo1, zoo2, zoo8) timed again on this session's host
# (2026-11-29; 2.1x slower by the speed probe than the tables' host of 2026-11-26..28),
# under the five CPU training runtimes and the valid torch 1 thread, as devices
# "epyc-day2-<config>": the same runtimes on another day, for a candidate that learns how
# a host moves each model (see README, "The same runtime on another day").
set -e
cd "$(dirname "$0")/../../.."
for cfg in ort-2t ort-noopt-1t ort-basic-2t ort-noopt-2t torch-2t torch-1t; do
  for set in zoo1 zoo2 zoo8; do
    [ -f "datasets/model_sets/$set/epyc-day2-$cfg.csv" ] && continue
    echo "$(date +%T) $set $cfg"
    latpred data model-set measure "$set" --config "$cfg" --device "epyc-day2-$cfg"
  done
done
echo "$(date +%T) done"

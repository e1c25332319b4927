cd /work/h
export PYTHONPATH=/work/h
R=/work/main/runs/stop38/R.ckpt
python -c "
from predictor.checkpoint import Checkpoint
from predictor.shipped import export_training_devices
print(len(export_training_devices(Checkpoint.load('$R'), '/work/main/runs/stop38/R_devices')))" > /dev/null 2>&1
export LATPRED_DEVICE_DIR=/work/main/runs/stop38/R_devices
CELLS=zoo1/epyc-ov-1t,zoo8/epyc-ov-1t,zoo1/epyc-torch-1t,zoo2/epyc-torch-1t,zoo8/epyc-torch-1t
for s in amortised headridge auto; do CKPT=$R python /work/main/runs/stop38/exp_auto.py $CELLS 20 0.01 $s 2>&1 | grep -v Warn; done
python scripts/benchmark_fewshot.py --space nb201 --shots 10 --seeds 3 --valid --no-scratch --checkpoint $R 2>&1 | grep "mean spearman\|mean mape"
python scripts/benchmark_fewshot.py --space fbnet --shots 10 --seeds 3 --valid --no-scratch --checkpoint $R 2>&1 | grep "mean spearman\|mean mape"

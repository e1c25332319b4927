"""In-sample MAPE of the amortised embedding on all of a cell's models (z from all of them)."""
import sys, numpy as np, torch
sys.path.insert(0, '/work/main/scripts')
from benchmark_local_device import valid_models
from predictor.checkpoint import Checkpoint
from predictor.adaptation import adapt, predict
torch.manual_seed(0)
cells = sys.argv[2].split(',')
for ck in sys.argv[1].split(','):
    model = Checkpoint.load(ck).model
    out = []
    for cell in cells:
        rows, store = valid_models(cell)
        lat = np.array([r['latency_ms'] for r in rows]); idx = np.arange(len(rows))
        b = store.batch(idx); y = torch.tensor(np.log(lat), dtype=torch.float32)
        with torch.no_grad():
            st = adapt(model, b, y)
            out.append(100 * np.mean(np.abs(np.exp(predict(model, b, st).numpy()) / lat - 1)))
    print(ck, " ".join(f"{c}={v:.1f}" for c, v in zip(cells, out)), flush=True)

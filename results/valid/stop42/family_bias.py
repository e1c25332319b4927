"""Case a per draw on valid cells: MAPE, and mean log bias of MobileNets / other CNNs,
with and without a depthwise model in the 10 calibration CNNs ("auto", 20 draws)."""
import os, sys, time
import numpy as np, torch
sys.path.insert(0, '/work/main/scripts')
from benchmark_local_device import valid_models
from predictor.api import Predictor
from predictor.adaptation import adapt_named, predict
from predictor.model_sets import model_set_specs

p = Predictor.load(os.environ.get("CKPT")); model = p.model; known = p.known_devices()
strat = sys.argv[2] if len(sys.argv) > 2 else "auto"
for cell in sys.argv[1].split(','):
    t0 = time.time()
    rows, store = valid_models(cell)
    fam = np.array([s.family for s in model_set_specs(cell.split('/')[0])])
    lat = np.array([r['latency_ms'] for r in rows]); kind = np.array([r['kind'] for r in rows])
    cnn = np.flatnonzero(kind == 'cnn')
    out = {True: [], False: []}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        sa = rng.choice(cnn, 10, replace=False)
        test = np.setdiff1d(cnn, sa)
        y = torch.tensor(np.log(lat[sa]), dtype=torch.float32)
        st, _ = adapt_named(model, store.batch(sa), y, strat, finetune_steps=0, lr=0.01, known=known)
        err = predict(model, store.batch(test), st).numpy() - np.log(lat[test])
        mb = fam[test] == 'mobilenet'
        has = bool((fam[sa] == 'mobilenet').any())
        out[has].append((100 * np.mean(np.abs(np.exp(err) - 1)), err[mb].mean(), err[~mb].mean()))
    for has, v in out.items():
        if v:
            v = np.array(v)
            print(f"{cell} {strat} mobilenet in support={has!s:5} n={len(v):2d}: MAPE {v[:,0].mean():5.1f}"
                  f"  bias mobilenet {v[:,1].mean():+.2f} others {v[:,2].mean():+.2f}", flush=True)
    print(f"  ({time.time()-t0:.0f}s)")

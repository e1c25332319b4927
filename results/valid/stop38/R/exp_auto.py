"""MAPE of 'auto' cases a/b/c on valid cells, 20 draws, with finetune steps / lr overrides."""
import sys, numpy as np, torch, time
sys.path.insert(0, '/work/main/scripts')
from benchmark_local_device import valid_models
from predictor.api import Predictor
from predictor.adaptation import adapt_named, predict
import os; p = Predictor.load(os.environ.get("CKPT")); model = p.model; known = p.known_devices()
steps, lr, strat = int(sys.argv[2]), float(sys.argv[3]), (sys.argv[4] if len(sys.argv) > 4 else "auto")
seeds = 20
for cell in sys.argv[1].split(','):
    t0 = time.time()
    rows, store = valid_models(cell)
    lat = np.array([r['latency_ms'] for r in rows]); kind = np.array([r['kind'] for r in rows])
    cnn, tf = np.flatnonzero(kind == 'cnn'), np.flatnonzero(kind == 'transformer')
    res = {"a": [], "b": [], "c": []}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        sa = rng.choice(cnn, 10, replace=False)
        sc = np.concatenate([rng.choice(cnn, 5, replace=False), rng.choice(tf, 5, replace=False)])
        for case, sup, test in [("a", sa, np.setdiff1d(cnn, sa)), ("b", sa, tf), ("c", sc, np.setdiff1d(np.arange(len(rows)), sc))]:
            if case == "b" and res["b"] and False: pass
            y = torch.tensor(np.log(lat[sup]), dtype=torch.float32)
            st, _ = adapt_named(model, store.batch(sup), y, strat, finetune_steps=steps, lr=lr, known=known)
            pr = np.exp(predict(model, store.batch(test), st).numpy())
            res[case].append(100 * np.mean(np.abs(pr / lat[test] - 1)))
    print(f"{cell} steps {steps} lr {lr} {strat}: " + " / ".join(f"{np.mean(v):.1f}" for v in res.values()) + f"  ({time.time()-t0:.0f}s)", flush=True)

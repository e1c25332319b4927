"""Stop 43: where case b's error sits on the generic CPU valid cells (selection data only):
per transformer family, the mean log(predicted / measured) and MAPE of "auto", calibrated
on 10 random CNNs, 20 draws.

    CKPT=... LATPRED_DEVICE_DIR=... python results/valid/stop43/caseb_diag.py CELLS
"""
import os
import sys
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../scripts"))
from benchmark_local_device import valid_models  # noqa: E402

from predictor.adaptation import adapt_named, predict  # noqa: E402
from predictor.api import Predictor  # noqa: E402
from predictor.model_sets import model_set_specs  # noqa: E402

p = Predictor.load(os.environ.get("CKPT"))
model, known = p.model, p.known_devices()
for cell in sys.argv[1].split(","):
    rows, store = valid_models(cell)
    fam = np.array([s.family for s in model_set_specs(cell.split("/")[0])])
    lat = np.array([r["latency_ms"] for r in rows])
    kind = np.array([r["kind"] for r in rows])
    cnn, tf = np.flatnonzero(kind == "cnn"), np.flatnonzero(kind == "transformer")
    logerr = defaultdict(list)
    draw_bias, debiased = [], []
    for seed in range(20):
        sup = np.random.default_rng(seed).choice(cnn, 10, replace=False)
        y = torch.tensor(np.log(lat[sup]), dtype=torch.float32)
        st, _ = adapt_named(model, store.batch(sup), y, "auto", finetune_steps=0, lr=0.01,
                            known=known)
        e = predict(model, store.batch(tf), st).numpy() - np.log(lat[tf])
        draw_bias.append(e.mean())
        debiased.append(e - e.mean())
        for i, v in zip(tf, e):
            logerr[fam[i]].append(v)
    allerr = np.concatenate([np.array(v) for v in logerr.values()])
    print(f"{cell}: MAPE {100 * np.mean(np.abs(np.exp(allerr) - 1)):.1f}  bias {allerr.mean():+.3f}"
          f"  draw-bias sd {np.std(draw_bias):.3f}  MAPE after per-draw bias removed "
          f"{100 * np.mean(np.abs(np.exp(np.concatenate(debiased)) - 1)):.1f}")
    for f, v in sorted(logerr.items()):
        v = np.array(v)
        print(f"   {f:22s} n {len(v) // 20:3d}  bias {v.mean():+.3f}  sd {v.std():.3f}  "
              f"MAPE {100 * np.mean(np.abs(np.exp(v) - 1)):.1f}")

"""Python API: load the predictor, adapt it to a device, predict milliseconds.

    >>> p = Predictor.load()                       # the shipped checkpoint
    >>> p.adapt("myboard", ["a.onnx", "b.onnx", ...], [3.1, 7.4, ...])
    >>> p.predict(["c.onnx"], device="myboard")     # -> np.ndarray of ms
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictor.adaptation import (
    STRATEGIES,
    DeviceState,
    adapt_named,
    predict,
)
from predictor.checkpoint import Checkpoint
from predictor.device_store import (
    list_device_files,
    load_device,
    model_fingerprint,
    save_device,
)
from predictor.errors import PredictorError
from predictor.graph import OpGraph, extract_graph
from predictor.graph_store import GraphStore
from predictor.onnx_io import InputShapes

MIN_SHOTS = 5
DEFAULT_FINETUNE_STEPS = 20  # when the checkpoint's config sets none


def check_latencies(latencies_ms: Sequence[float], count: int) -> np.ndarray:
    """Validate measured latencies: as many as models, finite and positive."""
    y = np.asarray(latencies_ms, dtype=np.float64).reshape(-1)
    if y.size != count:
        raise PredictorError(f"Got {y.size} latencies for {count} models; give one per model")
    bad = [i for i, v in enumerate(y) if not np.isfinite(v) or v <= 0]
    if bad:
        raise PredictorError(
            f"Latencies must be finite and positive (ms); bad values at rows {bad[:10]}: "
            f"{[float(y[i]) for i in bad[:10]]}")
    if y.size < MIN_SHOTS:
        raise PredictorError(f"Too few calibration samples: {y.size}; need at least {MIN_SHOTS}")
    return y


class Predictor:
    """A checkpoint plus the devices it knows (shipped and calibrated)."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.model = checkpoint.model.eval()
        self.fingerprint = model_fingerprint(self.model)
        self.devices: dict[str, DeviceState] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> Predictor:
        """Load a checkpoint (default: the shipped one in `checkpoints/`)."""
        return cls(Checkpoint.load(path))

    def graphs(self, models: Sequence[Any], input_shape: InputShapes = None) -> GraphStore:
        """Operator graphs of models: ONNX paths/bytes/ModelProtos, `OpGraph`s, or
        (torch module, example input) pairs."""
        graphs = []
        for m in models:
            if isinstance(m, OpGraph):
                graphs.append(m)
            elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], torch.nn.Module):
                graphs.append(extract_graph(m[0], example_input=m[1]))
            else:
                graphs.append(extract_graph(m, input_shape=input_shape))
        return GraphStore.from_graphs(graphs)

    def adapt(self, device_name: str, models: Sequence[Any], latencies_ms: Sequence[float], *,
              input_shape: InputShapes = None, strategy: str = "auto",
              finetune_steps: int | None = None, save: bool = False,
              info: dict[str, Any] | None = None) -> DeviceState:
        """Adapt to a device from measured models; with `save`, store it for later sessions.

        `strategy`: "auto" (default) picks, by cross-validation on the measurements, among
        the amortised embedding, fine-tuning and the nearest-known-device ensemble (see
        `predictor.adaptation.STRATEGIES`); or name one of them. The choice is recorded
        in the device's `info["strategy"]`.
        """
        names = list(STRATEGIES)
        if strategy != "auto" and strategy not in names:
            raise PredictorError(f"Unknown adaptation strategy '{strategy}'; "
                                 f"use 'auto' or one of {names}")
        y = check_latencies(latencies_ms, len(models))
        store = models if isinstance(models, GraphStore) else self.graphs(models, input_shape)
        steps = (finetune_steps if finetune_steps is not None
                 else self.checkpoint.config.finetune_steps or DEFAULT_FINETUNE_STEPS)
        support = store.batch(range(len(store)))
        log_y = torch.tensor(np.log(y), dtype=torch.float32)
        lr = self.checkpoint.config.finetune_lr
        state, strategy = adapt_named(self.model, support, log_y, strategy, finetune_steps=steps,
                                      lr=lr, known=self.known_devices())
        self.devices[device_name] = state
        if save:
            save_device(device_name, state, self.fingerprint, {**(info or {}),
                                                               "strategy": strategy})
        return state

    def known_devices(self) -> list[DeviceState]:
        """The checkpoint's training devices (shipped embeddings), for the nearest-device
        ensemble; empty when none match this checkpoint."""
        if not hasattr(self, "_known"):
            self._known = []
            for name in list_device_files():
                try:
                    state, info = load_device(name, self.fingerprint)
                except PredictorError:
                    continue  # another checkpoint's or a corrupt file: not a reference
                if info.get("kind") == "training device":
                    self._known.append(state)
        return self._known

    def space_graphs(self, space: str, archs: Sequence[Any], *,
                     input_shape: Sequence[int] | None = None,
                     num_classes: int | None = None) -> GraphStore:
        """Operator graphs of search-space architectures (NB201 arch strings, FBNet block
        lists), memoised per (space, input shape, classes, arch)."""
        from predictor.corpus import arch_graph

        cache = self.__dict__.setdefault("_arch_graphs", {})
        shape = tuple(input_shape) if input_shape is not None else None
        graphs = []
        for arch in archs:
            key = (space, shape, num_classes, arch if isinstance(arch, str) else tuple(arch))
            if key not in cache:
                cache[key] = arch_graph(space, arch, shape, num_classes)
            graphs.append(cache[key])
        return GraphStore.from_graphs(graphs)

    def predict_batch(self, space: str, archs: Sequence[Any], device: str, *,
                      input_shape: Sequence[int] | None = None,
                      num_classes: int | None = None) -> np.ndarray:
        """Predicted latency in ms of search-space architectures on `device`, (n,)."""
        store = self.space_graphs(space, archs, input_shape=input_shape,
                                  num_classes=num_classes)
        return self.predict(store, device)

    def device(self, name: str) -> DeviceState:
        if name not in self.devices:
            self.devices[name] = load_device(name, self.fingerprint)[0]
        return self.devices[name]

    def predict(self, models: Sequence[Any] | GraphStore, device: str, *,
                input_shape: InputShapes = None, chunk: int = 1024) -> np.ndarray:
        """Predicted latency in ms, one per model, (n,) float64."""
        state = self.device(device)
        store = models if isinstance(models, GraphStore) else self.graphs(models, input_shape)
        out = [predict(self.model, store.batch(range(i, min(i + chunk, len(store)))), state)
               for i in range(0, len(store), chunk)]
        return torch.exp(torch.cat(out)).numpy().astype(np.float64)

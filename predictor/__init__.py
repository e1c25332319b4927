"""latpred: a meta-learned hardware latency predictor for any ONNX model."""

from __future__ import annotations

__version__ = "0.1.0"

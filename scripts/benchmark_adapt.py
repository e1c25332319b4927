"""Adaptation cost: seconds to calibrate the shipped predictor to a new device from K ONNX files.

    python scripts/benchmark_adapt.py [--shots 10]

Target (few-shot issue): at most 10 s on CPU, graph extraction included.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from predictor.api import Predictor
from predictor.corpus import SPACES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10)
    args = parser.parse_args()
    space = SPACES["nb201"]
    archs = space.archs()[: args.shots]
    predictor = Predictor.load()
    rng = np.random.default_rng(0)
    latencies = rng.uniform(5, 50, size=len(archs))  # any positive values: timing only
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, arch in enumerate(archs):
            path = Path(tmp) / f"m{i}.onnx"
            path.write_bytes(space.build_onnx(arch).SerializeToString())
            paths.append(path)
        predictor.known_devices()  # loaded once per session
        print("| strategy | seconds (graphs from ONNX files + adaptation) |")
        print("|---|---|")
        for strategy in ("amortised", "nearest", "finetune", "finetune+nearest", "auto"):
            start = time.perf_counter()
            predictor.adapt("bench", paths, latencies, strategy=strategy)
            print(f"| {strategy} | {time.perf_counter() - start:.2f} |")


if __name__ == "__main__":
    main()

"""Graph-extraction speed: seconds to turn an ONNX file on disk into an `OpGraph` and PyG `Data`.

Target (issue: ONNX operator graphs): a ResNet-50-sized model in under 0.3 s.

    python scripts/benchmark_graphs.py [--repeats 7] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from predictor import model_zoo
from predictor.features import to_data
from predictor.graph import extract_graph

TARGET_SECONDS = 0.3


def time_model(path: Path, repeats: int) -> dict:
    extract_graph(path)  # warm-up: imports, caches
    to_data(extract_graph(path))
    extract_times, data_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        graph = extract_graph(path)
        mid = time.perf_counter()
        to_data(graph)
        end = time.perf_counter()
        extract_times.append(mid - start)
        data_times.append(end - mid)
    return {
        "file_mb": path.stat().st_size / 1e6,
        "nodes": len(graph.nodes),
        "gmacs": graph.macs / 1e9,
        "extract_s": statistics.median(extract_times),
        "to_data_s": statistics.median(data_times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("resnet50", "resnet18", "mobilenet_v2"):
            path = Path(tmp) / f"{name}.onnx"
            path.write_bytes(model_zoo.export(name))
            results[name] = time_model(path, args.repeats)
    print(f"| model | ONNX MB | nodes | GMACs | extract s (median of {args.repeats}) "
          "| to PyG s | total s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        total = r["extract_s"] + r["to_data_s"]
        print(f"| {name} | {r['file_mb']:.1f} | {r['nodes']} | {r['gmacs']:.2f} | "
              f"{r['extract_s']:.3f} | {r['to_data_s']:.4f} | {total:.3f} |")
    r50 = results["resnet50"]
    verdict = "PASS" if r50["extract_s"] + r50["to_data_s"] < TARGET_SECONDS else "FAIL"
    print(f"\nResNet-50 extraction + featurisation: {r50['extract_s'] + r50['to_data_s']:.3f} s "
          f"(target < {TARGET_SECONDS} s): {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

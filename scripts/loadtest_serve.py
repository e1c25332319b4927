"""Bounded load test of `latpred serve` on loopback: concurrent clients, a fixed number of
requests, then a check that no calibration was lost.

    python scripts/loadtest_serve.py [--requests 120] [--concurrency 4] [--calibrations 4]
                                     [--batch 16] [--json OUT.json]

Starts the real server (uvicorn, `python -m predictor.cli_serve`) in a subprocess on a free
127.0.0.1 port with a temporary device folder, runs `--concurrency` client threads that
share `--requests` requests (batched NB201 predictions on shipped and freshly calibrated
devices, device listings, and calibrations of distinct new device names), stops the
server, and prints a markdown table: throughput, p50/p99 per endpoint, errors, lost
calibrations (a calibration is lost when its device is not listed afterwards or does not
predict), and shipped devices whose predictions of a fixed set of archs changed between
before and after the load (concurrent calibrations must not disturb the shared model).
Exits 1 on any error, lost calibration or changed prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from predictor.spaces.nb201 import OPS, arch_to_str

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["pixel3@nb201", "samsung_a50@nb201", "1080ti_1@nb201"]
OP_COST = {"none": 0.0, "skip_connect": 0.1, "avg_pool_3x3": 0.4, "nor_conv_1x1": 0.8,
           "nor_conv_3x3": 2.0}  # synthetic device: ms per cell edge


@dataclass
class Call:
    endpoint: str
    status: int  # 0: no response (connection error, timeout)
    seconds: float
    archs: int = 0
    error: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, device_dir: str, checkpoint: str | None) -> subprocess.Popen:
    env = {**os.environ, "LATPRED_DEVICE_DIR": device_dir,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "predictor.cli_serve", "--host", "127.0.0.1", "--port",
           str(port), "--log-level", "warning"]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_ready(base: str, server: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with {server.returncode}:\n{server.stderr.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


def synthetic_latency(arch_ops: list[str], scale: float, rng: random.Random) -> float:
    """A plausible latency (ms) of an NB201 cell stack on a made-up device."""
    return scale * (1.0 + sum(OP_COST[op] for op in arch_ops)) * rng.uniform(0.95, 1.05)


def make_jobs(args: argparse.Namespace, pool: list[str], pool_ops: list[list[str]]
              ) -> list[tuple[str, dict]]:
    rng = random.Random(args.seed)
    jobs: list[tuple[str, dict]] = []
    for i in range(args.calibrations):
        idx = rng.sample(range(len(pool)), args.shots)
        scale = rng.uniform(0.5, 5.0)
        jobs.append(("calibrate", {
            "name": f"load-board-{i}", "space": "nb201", "archs": [pool[j] for j in idx],
            "latency_ms": [synthetic_latency(pool_ops[j], scale, rng) for j in idx],
            "provenance": {"source": "loadtest_serve.py"}}))
    listings = max(1, (args.requests - args.calibrations) // 5)
    jobs += [("devices", {})] * listings
    for _ in range(args.requests - len(jobs)):
        jobs.append(("predict", {"space": "nb201", "archs": rng.sample(pool, args.batch)}))
    rng.shuffle(jobs)
    return jobs


def run_load(base: str, jobs: list[tuple[str, dict]], concurrency: int
             ) -> tuple[list[Call], list[str], float]:
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    calls: list[Call] = []
    calibrated: list[str] = []  # devices whose calibration returned 200
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=120) as client:
            while True:
                try:
                    kind, body = todo.get_nowait()
                except queue.Empty:
                    return
                if kind == "predict":  # half on a device calibrated during this run
                    with lock:
                        fresh = list(calibrated)
                    body = {**body, "device": rng.choice(fresh if fresh and rng.random() < 0.5
                                                         else SHIPPED)}
                start = time.perf_counter()
                try:
                    r = (client.get("/devices") if kind == "devices"
                         else client.post(f"/{kind}", json=body))
                    status, error = r.status_code, "" if r.is_success else r.text[:300]
                except httpx.HTTPError as exc:
                    status, error = 0, f"{type(exc).__name__}: {exc}"
                call = Call(kind, status, time.perf_counter() - start,
                            len(body["archs"]) if kind == "predict" and status == 200 else 0,
                            error)
                with lock:
                    calls.append(call)
                    if kind == "calibrate" and status == 200:
                        calibrated.append(body["name"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return calls, calibrated, time.perf_counter() - start


def lost_calibrations(base: str, names: list[str], device_dir: str) -> list[str]:
    """Calibrated devices that are not listed, not stored, or do not predict."""
    listed = {d["name"]: d for d in httpx.get(f"{base}/devices", timeout=60).json()["devices"]}
    lost = []
    for name in names:
        r = httpx.post(f"{base}/predict", timeout=60, json={
            "device": name, "space": "nb201", "archs": [arch_to_str(["nor_conv_3x3"] * 6)]})
        ok = (name in listed and listed[name]["usable"] and r.status_code == 200
              and (Path(device_dir) / f"{name}.json").is_file())
        if not ok:
            lost.append(name)
    return lost


def shipped_predictions(base: str, archs: list[str]) -> dict[str, list[float]]:
    """Predictions of `archs` on every shipped device of the load."""
    out = {}
    for device in SHIPPED:
        r = httpx.post(f"{base}/predict", timeout=60,
                       json={"device": device, "space": "nb201", "archs": archs})
        r.raise_for_status()
        out[device] = [row["latency_ms"] for row in r.json()["predictions"]]
    return out


def changed_devices(before: dict[str, list[float]], after: dict[str, list[float]]) -> list[str]:
    return [d for d in before if not np.allclose(before[d], after[d], rtol=1e-4)]


def summarise(args, calls: list[Call], wall: float, expected: int, lost: list[str],
              changed: list[str]) -> dict:
    rows = {}
    for endpoint in ("predict", "devices", "calibrate"):
        ms = np.array([c.seconds * 1e3 for c in calls if c.endpoint == endpoint])
        if ms.size:
            rows[endpoint] = {"requests": int(ms.size), "p50_ms": float(np.percentile(ms, 50)),
                              "p99_ms": float(np.percentile(ms, 99)),
                              "errors": sum(1 for c in calls
                                            if c.endpoint == endpoint and c.status != 200)}
    return {"requests": len(calls), "concurrency": args.concurrency, "batch": args.batch,
            "wall_s": wall, "throughput_rps": len(calls) / wall,
            "archs_per_s": sum(c.archs for c in calls) / wall,
            "errors": sum(1 for c in calls if c.status != 200),
            "calibrations": expected, "lost_calibrations": len(lost), "lost": lost,
            "changed_predictions": changed,
            "endpoints": rows,
            "first_errors": [f"{c.endpoint} {c.status}: {c.error}" for c in calls
                             if c.status != 200][:5]}


def print_table(s: dict) -> None:
    print(f"| requests | concurrency | wall s | throughput req/s | archs/s | errors "
          f"| calibrations | lost calibrations |\n| ---: | ---: | ---: | ---: | ---: | ---: "
          f"| ---: | ---: |\n| {s['requests']} | {s['concurrency']} | {s['wall_s']:.1f} "
          f"| {s['throughput_rps']:.1f} | {s['archs_per_s']:.0f} | {s['errors']} "
          f"| {s['calibrations']} | {s['lost_calibrations']} |\n")
    print("| endpoint | requests | p50 ms | p99 ms | errors |\n| --- | ---: | ---: | ---: | ---: |")
    for name, r in s["endpoints"].items():
        print(f"| {name} | {r['requests']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r['errors']} |")
    for line in s["first_errors"]:
        print(f"error: {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=120, help="total, all clients")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--calibrations", type=int, default=4,
                        help="distinct new devices calibrated during the run")
    parser.add_argument("--shots", type=int, default=10, help="measurements per calibration")
    parser.add_argument("--batch", type=int, default=16, help="archs per predict request")
    parser.add_argument("--arch-pool", type=int, default=512,
                        help="distinct NB201 archs the requests draw from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--json", type=Path, default=None, metavar="OUT")
    args = parser.parse_args()
    if args.requests < args.calibrations + 2:
        parser.error("--requests must exceed --calibrations by at least 2")

    rng = np.random.default_rng(args.seed)
    pool_ops = [rng.choice(OPS, 6).tolist() for _ in range(args.arch_pool)]
    pool = [arch_to_str(ops) for ops in pool_ops]
    jobs = make_jobs(args, pool, pool_ops)
    with tempfile.TemporaryDirectory(prefix="latpred-load-") as device_dir:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(port, device_dir, args.checkpoint)
        try:
            wait_ready(base, server)
            before = shipped_predictions(base, pool[:64])
            calls, calibrated, wall = run_load(base, jobs, args.concurrency)
            expected = [body["name"] for kind, body in jobs if kind == "calibrate"]
            lost = lost_calibrations(base, expected, device_dir)
            changed = changed_devices(before, shipped_predictions(base, pool[:64]))
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    summary = summarise(args, calls, wall, len(expected), lost, changed)
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")
    if changed:
        print(f"predictions changed during the load on: {', '.join(changed)}")
    return 0 if summary["errors"] == 0 and not lost and not changed else 1


if __name__ == "__main__":
    sys.exit(main())

"""The cached graph corpus of a search space: every architecture's operator graph, built once.

`build_corpus` turns each architecture of a space (NB201: 15,625, FBNet: 5,000, in the
order of HELP's latency tables) into its operator graph through ONNX, the same path as
any user model, and stores the graphs as `GraphStore`s, one per batch size.

Speed: the networks' ONNX graphs are emitted directly (`predictor.spaces.*.build_onnx`,
proven equal to `torch.onnx.export` in the spaces' tests) instead of exported, and
graphs are computed once at batch 1 and re-batched exactly (`OpGraph.with_batch`).

Cache layout (git-ignored), resumable and self-checking:
    <cache_dir>/<space>-<key>/shard-00000.bin ...   graphs of 250 archs each
    <cache_dir>/<space>-<key>/b<batch>.store         the assembled `GraphStore`
Every file starts with the sha256 of its payload; a file that fails the check is
rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import onnx
from tqdm.auto import tqdm

from predictor.errors import DataError, PredictorError
from predictor.features import FEATURE_SCHEMA
from predictor.graph import OpGraph, OpNode, graph_from_inferred
from predictor.graph_store import GraphStore
from predictor.locations import default_cache_dir
from predictor.storage import atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "LATPRED_CACHE_DIR"
DEFAULT_CACHE_DIR = default_cache_dir()
# Bump when the graphs a builder emits change, so that old caches are not reused.
BUILDER_VERSION = 4
# A space's network is by default the graph of every op it runs, as eager PyTorch executes
# it ("eager"), not as the legacy ONNX export writes it ("exported": repeated
# parameter-free ops on one tensor merged, NB201's avg pools, ReLUs and zero-multiplies of
# a node feeding several edges). HELP's tables were timed in PyTorch and HW-NAS-Bench's
# simulators cost every edge. A least-squares fit of latency on the counts of each op
# (K = 10, scored on the rest of HELP's training pool) ranks batch-256 GPUs far better on
# the counts over all 6 edges than on the counts with the export's merged pools:
# 1080ti_256 1.000 vs 0.941, meta-valid titanx_256 0.993 vs 0.933; over the 13 training
# and meta-valid devices 0.956 vs 0.946 (stop 25). Runtimes that compile the exported
# graph (ONNX Runtime, TorchScript-mobile, LiteRT: HW-NAS-Bench-360's) run the merged one.
GRAPH_MODES = ("eager", "exported")
SHARD_SIZE = 250


@dataclass(frozen=True)
class SpaceSpec:
    """How to list a search space's architectures and emit one's ONNX graph."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    batch_sizes: tuple[int, ...]  # the batch sizes of the space's measured devices

    def archs(self, data_dir: str | Path | None = None) -> list[str]:
        """Architecture specs in table order (index i <-> latency table entry i)."""
        from predictor import tables

        if self.name == "nb201":
            index = tables.nb201_arch_index(data_dir)
            ordered = sorted(index, key=index.__getitem__)
            return ordered
        return ["-".join(blocks) for blocks in tables.fbnet_archs(data_dir)]

    def build_onnx(self, arch: str, input_shape: Sequence[int] | None = None,
                   num_classes: int | None = None, weights: bool = True,
                   graph: str = "eager") -> onnx.ModelProto:
        """The architecture's ONNX model, with every op the network runs or as exported
        (`graph`, one of `GRAPH_MODES`); `weights=False` skips the (zero) weight data,
        enough for graph extraction and several times faster."""
        from predictor.spaces import fbnet, nb201

        module = nb201 if self.name == "nb201" else fbnet
        return module.build_onnx(arch, input_shape=tuple(input_shape or self.input_shape),
                                 num_classes=num_classes or self.num_classes, weights=weights,
                                 cse=check_graph_mode(graph) == "exported")


SPACES: dict[str, SpaceSpec] = {
    "nb201": SpaceSpec("nb201", (1, 3, 32, 32), 10, (1, 32, 256)),
    "fbnet": SpaceSpec("fbnet", (1, 3, 32, 32), 100, (1, 32, 64)),
}


def get_space(name: str) -> SpaceSpec:
    if name not in SPACES:
        raise PredictorError(f"Unknown search space '{name}'; known: {sorted(SPACES)}")
    return SPACES[name]


def check_graph_mode(graph: str) -> str:
    if graph not in GRAPH_MODES:
        raise PredictorError(f"Unknown graph mode '{graph}'; known: {list(GRAPH_MODES)}")
    return graph


def arch_graph(space: str, arch: str, input_shape: Sequence[int] | None = None,
               num_classes: int | None = None, graph: str = "eager") -> OpGraph:
    """The operator graph of one architecture (the emitter writes every tensor's shape,
    so no shape inference is needed); `graph`: one of `GRAPH_MODES`."""
    model = get_space(space).build_onnx(arch, input_shape, num_classes, weights=False,
                                        graph=graph)
    return graph_from_inferred(model)


def cache_dir(explicit: str | Path | None = None) -> Path:
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env) if env else DEFAULT_CACHE_DIR


def corpus_dir(space: SpaceSpec, root: Path) -> Path:
    key = f"{'x'.join(map(str, space.input_shape[1:]))}-c{space.num_classes}-" \
          f"s{FEATURE_SCHEMA.version}-v{BUILDER_VERSION}"
    return root / f"{space.name}-{key}"


def _write_checked(path: Path, payload: bytes) -> None:
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, digest + b"\n" + payload)


def _read_checked(path: Path) -> bytes | None:
    """The payload of a checked file, or None when missing or corrupt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    digest, _, payload = data.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        log.warning("Cache file %s is corrupt; rebuilding it", path)
        return None
    return payload


def pack_graphs(graphs: Sequence[OpGraph]) -> dict:
    """A compact picklable form: unique nodes once, graphs as node ids + edges."""
    unique: dict[OpNode, int] = {}
    packed = []
    for g in graphs:
        ids = [unique.setdefault(n, len(unique)) for n in g.nodes]
        packed.append((ids, g.edges, g.input_shapes, g.unknown_ops, g.params))
    return {"nodes": list(unique), "graphs": packed}


def unpack_graphs(obj: dict) -> list[OpGraph]:
    nodes = obj["nodes"]
    return [OpGraph([nodes[i] for i in ids], list(edges), dict(inputs), dict(unknown), params)
            for ids, edges, inputs, unknown, params in obj["graphs"]]


def _build_shard(space_name: str, archs: list[str], path: Path) -> str:
    graphs = [arch_graph(space_name, a) for a in archs]
    payload = {"archs": archs, **pack_graphs(graphs)}
    _write_checked(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    return str(path)


def _load_shard(path: Path, archs: list[str]) -> list[OpGraph] | None:
    payload = _read_checked(path)
    if payload is None:
        return None
    try:
        obj = pickle.loads(payload)
    except Exception:  # a checked file that still fails to unpickle: rebuild
        return None
    if obj.get("archs") != archs:
        log.warning("Cache shard %s belongs to other architectures; rebuilding it", path)
        return None
    return unpack_graphs(obj)


def build_corpus(
    space_name: str,
    *,
    batch_sizes: Sequence[int] | None = None,
    data_dir: str | Path | None = None,
    root: str | Path | None = None,
    workers: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    archs: list[str] | None = None,
) -> dict[int, GraphStore]:
    """Build (or load from cache) the graph corpus of a space, one store per batch size.

    Args:
        space_name: "nb201" or "fbnet".
        batch_sizes: defaults to the batch sizes of the space's measured devices.
        data_dir: where the HELP tables are (see `predictor.datadir`).
        root: cache folder (default `datasets/cache`, or `$LATPRED_CACHE_DIR`).
        workers: worker processes (default: CPU count).
        limit: only the first `limit` architectures (tests, quick looks).
        archs: the architecture specs, instead of reading them from the data directory.

    Returns:
        {batch size: GraphStore}, graph i = architecture i of the table.
    """
    space = get_space(space_name)
    batch_sizes = tuple(batch_sizes or space.batch_sizes)
    all_archs = archs if archs is not None else space.archs(data_dir)
    if limit is not None:
        all_archs = all_archs[:limit]
    folder = corpus_dir(space, cache_dir(root))
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "" if limit is None and archs is None else \
        f"-{hashlib.sha256('|'.join(all_archs).encode()).hexdigest()[:12]}"

    stores: dict[int, GraphStore] = {}
    for b in batch_sizes:
        payload = _read_checked(folder / f"b{b}{suffix}.store")
        if payload is not None:
            try:
                store = GraphStore.from_bytes(payload, str(folder / f"b{b}{suffix}.store"))
                if store.meta.get("archs_sha") == _archs_sha(all_archs):
                    stores[b] = store
            except DataError as exc:
                log.warning("%s; rebuilding it", exc)
    if len(stores) == len(batch_sizes):
        return stores

    graphs = _collect_graphs(space, all_archs, folder, workers, progress)
    for b in batch_sizes:
        if b in stores:
            continue
        meta = {"space": space.name, "batch_size": b, "num_classes": space.num_classes,
                "input_shape": [b, *space.input_shape[1:]], "archs_sha": _archs_sha(all_archs),
                "builder_version": BUILDER_VERSION}
        store = GraphStore.from_graphs(graphs, meta, batch_size=b)
        _write_checked(folder / f"b{b}{suffix}.store", store.to_bytes())
        stores[b] = store
    return {b: stores[b] for b in batch_sizes}


def _archs_sha(archs: list[str]) -> str:
    return hashlib.sha256("\n".join(archs).encode()).hexdigest()


def _collect_graphs(space: SpaceSpec, archs: list[str], folder: Path, workers: int | None,
                    progress: bool) -> list[OpGraph]:
    shards = [archs[i:i + SHARD_SIZE] for i in range(0, len(archs), SHARD_SIZE)]
    paths = [folder / f"shard-{i:05d}-{_archs_sha(s)[:10]}.bin" for i, s in enumerate(shards)]
    results: dict[int, list[OpGraph]] = {}
    for i, (shard, path) in enumerate(zip(shards, paths, strict=True)):
        cached = _load_shard(path, shard)
        if cached is not None:
            results[i] = cached
    todo = [i for i in range(len(shards)) if i not in results]
    bar = tqdm(total=len(archs), initial=sum(len(shards[i]) for i in results),
               desc=f"graphs {space.name}", unit="arch", disable=not progress)
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_build_shard, space.name, shards[i], paths[i]): i for i in todo}
            for future in as_completed(futures):
                future.result()
                bar.update(len(shards[futures[future]]))
    else:
        for i in todo:
            _build_shard(space.name, shards[i], paths[i])
            bar.update(len(shards[i]))
    bar.close()
    for i in todo:
        loaded = _load_shard(paths[i], shards[i])
        if loaded is None:
            raise DataError(f"Could not read back cache shard {paths[i]}")
        results[i] = loaded
    return [g for i in range(len(shards)) for g in results[i]]

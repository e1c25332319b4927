"""`latpred data ...`: fetch, check and describe the HELP tables; build the graph corpus.

Thin handlers over `predictor.datadir`, `tables`, `devices`, `splits` and `corpus`,
registered on the `latpred` parser by `predictor.cli`. Every bad input ends as a
`PredictorError`, which `latpred` prints as one line (exit code 2).

The data directory is checked (`datadir.help_dir`) before anything imports torch, so a
missing or partial directory is reported at once.

    latpred data download [--to DIR] [--base-url URL]
    latpred data check [--data-dir DIR]
    latpred data info [--data-dir DIR]
    latpred data build [--space nb201 fbnet] [--batch-sizes 1 32] [--workers N]
                       [--cache-dir DIR] [--data-dir DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from predictor.errors import DataError

_DEFAULT_SPACES = ("nb201", "fbnet")  # validated against predictor.tables.SPACES on use


# ----------------------------------------------------------------------------- library helpers


def check_space_tables(space: str, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Load and validate every table a space's registry devices and splits rely on.

    Checks the architecture list (`str_arch2idx.pt` or `metainfo.pt` + `arch.pt`), the
    reference indices, the latency table of every registry device with data for `space`,
    and that every device of every split of `space` is such a device.

    Returns:
        {"archs": number of architectures, "devices": number of tables checked,
        "near_zero": {device: count of invalid entries (see `tables.valid_mask`)},
        "unregistered": table stems in the data dir that the registry does not list}.

    Raises:
        DataError: a missing, corrupt or wrongly sized file (named in the message), or a
            split that uses a device without data for `space`.
    """
    from predictor import tables
    from predictor.devices import list_devices
    from predictor.splits import list_splits

    tables.check_space(space)
    if space == "nb201":
        n_archs = len(tables.nb201_arch_index(data_dir))
    else:
        n_archs = len(tables.fbnet_archs(data_dir))
    tables.reference_indices(space, data_dir)
    devices = [d.name for d in list_devices(space=space, source="help")]
    near_zero: dict[str, int] = {}
    for name in devices:
        table = tables.load_latency_table(space, name, data_dir)
        invalid = int((~tables.valid_mask(table)).sum())
        if invalid:
            near_zero[name] = invalid
    for split in list_splits(space):
        missing = [d for d in split.devices if d not in devices]
        if missing:
            raise DataError(
                f"Split '{split.name}' of '{space}' uses device(s) {missing} that have no "
                f"'{space}' data in the registry; fix predictor/resources/splits.yaml or "
                "devices.yaml"
            )
    unregistered = sorted(set(tables.available_devices(space, data_dir)) - set(devices))
    return {"archs": n_archs, "devices": len(devices), "near_zero": near_zero,
            "unregistered": unregistered}


def _data_dir_origin(explicit: str | None) -> str:
    from predictor.datadir import ENV_VAR

    if explicit is not None:
        return "--data-dir"
    if os.environ.get(ENV_VAR):
        return f"${ENV_VAR}"
    return "default"


def _cache_files(folder: Path) -> set[tuple[str, int]]:
    """(name, mtime) of the cache files in `folder`: a rewritten file counts as new."""
    if not folder.is_dir():
        return set()
    return {(p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


# ----------------------------------------------------------------------------- handlers


def cmd_build(args: argparse.Namespace) -> int:
    from predictor.datadir import help_dir, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    help_dir(data_dir)  # missing or partial data dir: one line, before torch loads
    if args.batch_sizes and min(args.batch_sizes) < 1:
        raise DataError(f"--batch-sizes must be positive integers, got {args.batch_sizes}")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be a positive integer, got {args.limit}")
    if args.workers is not None and args.workers < 1:
        raise DataError(f"--workers must be a positive integer, got {args.workers}")

    from predictor import corpus, tables

    spaces = [tables.check_space(s) for s in dict.fromkeys(args.space)]
    root = corpus.cache_dir(args.cache_dir)
    for space in spaces:
        check_space_tables(space, data_dir)  # a corrupt table is named before a long build
        folder = corpus.corpus_dir(corpus.get_space(space), root)
        before = _cache_files(folder)
        start = time.perf_counter()
        stores = corpus.build_corpus(space, batch_sizes=args.batch_sizes, data_dir=data_dir,
                                     root=root, workers=args.workers, limit=args.limit,
                                     progress=not args.quiet)
        seconds = time.perf_counter() - start
        written = len(_cache_files(folder) - before)
        summary = next(iter(stores.values())).summary()
        unique = ", ".join(f"b{b} {s.summary()['unique_nodes']}" for b, s in stores.items())
        cache_note = f"wrote {written} cache file(s)" if written else "all from cache"
        print(f"{space}: {summary['graphs']} graphs, {summary['mean_nodes']:.1f} nodes per graph "
              f"(max {summary['max_nodes']}), unique nodes {unique}; "
              f"{seconds:.1f} s, {cache_note}")
        print(f"  cache {folder}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from predictor.datadir import (
        ENV_VAR,
        HELP_BASE_URL,
        download_help,
        help_manifest,
        resolve_data_dir,
    )

    target = resolve_data_dir(args.to)
    folder = download_help(target, base_url=args.base_url or HELP_BASE_URL,
                           progress=not args.quiet, files=args.files or None)
    count = len(set(args.files)) if args.files else len(help_manifest())
    print(f"HELP data in {folder}: {count} file(s) present, sizes and sha256 verified")
    if resolve_data_dir() != target:
        print(f"use it with: export {ENV_VAR}={target}  (or pass --data-dir {target})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from predictor.datadir import help_dir, help_manifest, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    folder = help_dir(data_dir, verify_checksums=True)
    print(f"files: OK, {len(help_manifest())} HELP files in {folder}, sizes and sha256 verified")

    from predictor.tables import SPACES

    for space in SPACES:
        report = check_space_tables(space, data_dir)
        notes = ""
        if report["near_zero"]:
            notes += "; near-zero entries (masked): " + ", ".join(
                f"{d} {n}" for d, n in report["near_zero"].items())
        if report["unregistered"]:
            notes += f"; tables not in the registry (ignored): {report['unregistered']}"
        print(f"{space}: OK, {report['archs']} archs, {report['devices']} device tables, "
              f"splits consistent{notes}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from predictor.datadir import help_dir, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    print(f"data dir: {data_dir}  (from {_data_dir_origin(args.data_dir)})")
    help_dir(data_dir)

    from predictor import corpus
    from predictor.devices import list_devices
    from predictor.splits import get_split, list_splits
    from predictor.tables import SPACE_SIZES, SPACES

    root = corpus.cache_dir(args.cache_dir)
    for space in SPACES:
        help_split = get_split(space, "help")
        roles = {d: role for role in ("train", "valid", "test")
                 for d in getattr(help_split, role)}
        devices = list_devices(space=space, source="help")
        print(f"\n{space}: {SPACE_SIZES[space]} architectures, {len(devices)} devices")
        print(f"  {'device':<16}{'family':<16}{'batch':>6}  help split")
        for d in devices:
            batch = "-" if d.batch_size is None else str(d.batch_size)
            print(f"  {d.name:<16}{d.family:<16}{batch:>6}  {roles.get(d.name, '-')}")
        print("  splits:")
        for split in list_splits(space):
            alias = f" ({', '.join(split.aliases)})" if split.aliases else ""
            print(f"    {split.name}{alias}: train {len(split.train)}, valid {len(split.valid)}, "
                  f"test {', '.join(split.test)}")
        folder = corpus.corpus_dir(corpus.get_space(space), root)
        stores = [p.stem[1:] for p in folder.glob("b*.store")]
        full = sorted(int(b) for b in stores if b.isdigit())
        state = f"full corpus at batch {', '.join(map(str, full))}" if full else "not built"
        if len(stores) > len(full):
            state += f"; {len(stores) - len(full)} partial store(s) from --limit runs"
        print(f"  corpus cache: {folder} ({state})")
    return 0


# ----------------------------------------------------------------------------- parser


def cmd_model_set(args: argparse.Namespace) -> int:
    from predictor import model_sets
    from predictor.errors import PredictorError

    if args.action == "create":
        families = [f.strip() for f in args.families.split(",")] if args.families else None
        resolutions = ([int(r) for r in args.resolutions.split(",")]
                       if args.resolutions else None)
        macs = tuple(float(m) for m in args.macs.split(",")) if args.macs else None
        if macs is not None and (len(macs) != 2 or not 0 < macs[0] < macs[1]):
            raise PredictorError(f"--macs {args.macs!r}: give LOW,HIGH with 0 < LOW < HIGH")
        path = model_sets.create_model_set(args.name, args.seed, args.cnns, args.transformers,
                                           families=families, rnns=args.rnns,
                                           resolutions=resolutions, macs_range=macs)
        print(f"wrote {path}")
        return 0
    if args.config not in model_sets.TRAINING_CONFIGS:
        raise PredictorError(f"Unknown runtime config '{args.config}'; training configs: "
                             f"{sorted(model_sets.TRAINING_CONFIGS)}")
    config = model_sets.TRAINING_CONFIGS[args.config]
    device = args.device or f"{model_sets.machine_tag(config.device)}-{args.config}"
    if args.action == "floor":
        path, floor = model_sets.record_call_floor(args.name, device, config)
        print(f"recorded call floor {floor * 1e3:.1f} us in {path}")
        return 0
    path = model_sets.measure_device(args.name, device, config, max_seconds=args.max_seconds,
                                     energy=args.energy)
    print(f"wrote {path}")
    return 0


def register_data_commands(sub: argparse._SubParsersAction) -> None:
    """Add `data` with its `build`, `download`, `check`, `info` subcommands to `latpred`."""
    data = sub.add_parser("data", help="HELP latency data and the graph corpus",
                          description="Fetch, check and describe the HELP latency tables; "
                                      "build the cached graph corpus.")
    cmds = data.add_subparsers(dest="data_command", required=True,
                               metavar="{build,download,check,info,model-set}")

    def data_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", metavar="DIR",
                       help="folder that holds help/ (default: $LATPRED_DATA_DIR, "
                            "then ../shared/data)")

    p = cmds.add_parser("build", help="build (or load) the cached graph corpus")
    p.add_argument("--space", nargs="+", default=list(_DEFAULT_SPACES), metavar="SPACE",
                   help="nb201 and/or fbnet (default: both)")
    p.add_argument("--batch-sizes", nargs="+", type=int, metavar="B",
                   help="batch sizes (default: those of the space's devices)")
    p.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="cache folder (default: $LATPRED_CACHE_DIR, then datasets/cache)")
    data_dir_arg(p)
    p.add_argument("--limit", type=int, metavar="N", help="only the first N architectures")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_build)

    p = cmds.add_parser("download", help="fetch HELP's tables with sha256 checks")
    p.add_argument("--to", metavar="DIR",
                   help="data directory to fill (gets help/; default: the resolved data dir)")
    p.add_argument("--base-url", metavar="URL",
                   help="address of HELP's data/ folder (default: HELP's GitHub; file:// works)")
    p.add_argument("--files", nargs="+", metavar="PATH",
                   help="only these manifest paths, e.g. fbnet/arch.pt")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_download)

    p = cmds.add_parser("check", help="verify checksums and validate every table")
    data_dir_arg(p)
    p.set_defaults(handler=cmd_check)

    p = cmds.add_parser("info", help="data dir, devices per space, splits, corpus cache")
    data_dir_arg(p)
    p.add_argument("--cache-dir", metavar="DIR", help="cache folder to report on")
    p.set_defaults(handler=cmd_info)

    p = cmds.add_parser("model-set", help="create a set of generated models, measure it on "
                                          "this machine under a runtime config, or add the "
                                          "runtime's call floor to an older measurement")
    p.add_argument("action", choices=("create", "measure", "floor"),
                   help="floor: add the runtime's per-inference floor, timed now on a host "
                        "of the measurements' speed, to a CSV measured before sets recorded it")
    p.add_argument("name", help="model set name (datasets/model_sets/NAME)")
    p.add_argument("--seed", type=int, default=1, help="create: generator seed")
    p.add_argument("--cnns", type=int, default=120, help="create: number of CNNs")
    p.add_argument("--transformers", type=int, default=80, help="create: number of transformers")
    p.add_argument("--rnns", type=int, default=0,
                   help="create: number of recurrent models (LSTM / GRU; default none)")
    p.add_argument("--families", help="create: only these generator families, comma-separated "
                                      "(e.g. unet, which default sets leave out)")
    p.add_argument("--resolutions", metavar="R,R,...",
                   help="create: draw the CNNs' input resolutions from these (e.g. "
                        "256,384,512) instead of the generator's 32..224; CNN families only")
    p.add_argument("--macs", metavar="LOW,HIGH",
                   help="create: the models' MACs range (default 2e6,1e9)")
    p.add_argument("--config", default="ort-2t",
                   help="measure: runtime config (one of predictor.model_sets.TRAINING_CONFIGS: "
                        "ort-2t, ort-noopt-1t, torch-1t, ort-basic-2t, ort-noopt-2t, torch-2t, "
                        "torch-cuda)")
    p.add_argument("--device", help="measure: device name (default: <cpu or gpu tag>-<config>)")
    p.add_argument("--max-seconds", type=float, default=1.0, help="measure: timing budget per model")
    p.add_argument("--energy", action="store_true",
                   help="measure: also energy per inference (NVML on a GPU, RAPL on a CPU)")
    p.set_defaults(handler=cmd_model_set)

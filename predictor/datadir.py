"""Where the measured data lives, and how to fetch the HELP latency tables.

The package never ships measured data. It reads it from a *data directory*
whose `help/` sub-folder mirrors the `data/` folder of HELP's public
repository (`https://github.com/HayeonLee/HELP`, MIT licence)::

    <data_dir>/help/nasbench201/str_arch2idx.pt
    <data_dir>/help/nasbench201/latency/<device>.pt
    <data_dir>/help/fbnet/metainfo.pt
    ...

Which files belong there, with their sha256 and size in bytes, is listed in
`resources/help_manifest.json` (regenerate with `scripts/make_help_manifest.py`).
`download_help` fetches exactly those files and verifies each one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tqdm import tqdm

from predictor.errors import DataError

logger = logging.getLogger(__name__)

ENV_VAR = "LATPRED_DATA_DIR"
"""Environment variable that points at the data directory."""

HELP_BASE_URL = "https://raw.githubusercontent.com/HayeonLee/HELP/main/data/"
"""Upstream address of HELP's `data/` folder; a manifest path is appended to it."""

HELP_SUBDIR = "help"
REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST_PATH = Path(__file__).resolve().parent / "resources" / "help_manifest.json"
_CHUNK = 1 << 16  # bytes read per step while downloading or hashing


@dataclass(frozen=True)
class ManifestEntry:
    """One file of the HELP data: where it sits under `help/`, and how to check it.

    Attributes:
        path: POSIX path relative to the `help/` folder, e.g. `fbnet/metainfo.pt`.
        sha256: hex digest of the file's bytes.
        size: file size in bytes.
    """

    path: str
    sha256: str
    size: int


def resolve_data_dir(explicit: str | Path | None = None) -> Path:
    """Find the data directory (the folder that holds `help/`).

    Order: `explicit`; the `LATPRED_DATA_DIR` environment variable;
    `<repo root>/../shared/data` if it exists; `./../shared/data` relative to
    the current directory if it exists; else `~/.cache/latpred/data`.
    The result need not exist (see `help_dir` for the check).

    Args:
        explicit: a path given by the caller (CLI flag, function argument).

    Returns:
        The absolute path of the data directory.
    """
    if explicit is not None:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    for candidate in (REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return (Path.home() / ".cache" / "latpred" / "data").resolve()


@lru_cache(maxsize=1)
def help_manifest() -> tuple[ManifestEntry, ...]:
    """The files the package uses from HELP's `data/` folder, with checksums.

    Returns:
        The entries of `resources/help_manifest.json`, in file order.

    Raises:
        DataError: the manifest shipped with the package is missing or malformed.
    """
    try:
        raw = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
        return tuple(
            ManifestEntry(path=str(e["path"]), sha256=str(e["sha256"]), size=int(e["size"]))
            for e in raw["files"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"Cannot read the HELP manifest '{MANIFEST_PATH}': {exc}; "
            "reinstall the package or run 'python scripts/make_help_manifest.py'"
        ) from exc


def _fix_hint(data_dir: Path) -> str:
    return (
        f"run 'latpred data download --to {data_dir}' or set {ENV_VAR} "
        "to a directory that holds 'help/'"
    )


def help_file(relpath: str, data_dir: str | Path | None = None) -> Path:
    """Path of one HELP file, checked to exist (and, if listed, to have its manifest size).

    Args:
        relpath: path below `help/`, e.g. `nasbench201/latency/pixel2.pt`.
        data_dir: data directory; `None` resolves it with `resolve_data_dir`.

    Returns:
        The absolute path of the file.

    Raises:
        DataError: the file is missing, or its size differs from the manifest
            (a partial or altered download).
    """
    root = resolve_data_dir(data_dir)
    path = root / HELP_SUBDIR / relpath
    if not path.is_file():
        raise DataError(f"Missing HELP data file '{path}'; {_fix_hint(root)}")
    expected = {e.path: e.size for e in help_manifest()}.get(relpath)
    if expected is not None and path.stat().st_size != expected:
        raise DataError(
            f"HELP data file '{path}' has {path.stat().st_size} bytes, expected {expected} "
            f"(partial or altered download); {_fix_hint(root)}"
        )
    return path


def help_dir(data_dir: str | Path | None = None, *, verify_checksums: bool = False) -> Path:
    """The `help/` folder of the data directory, checked to hold every manifest file.

    Args:
        data_dir: data directory; `None` resolves it with `resolve_data_dir`.
        verify_checksums: also hash every file (about 8 MB) and compare with the manifest.

    Returns:
        The absolute path of `<data_dir>/help`.

    Raises:
        DataError: the folder or a file is missing, has the wrong size, or
            (with `verify_checksums`) the wrong sha256; names the first bad file.
    """
    root = resolve_data_dir(data_dir)
    folder = root / HELP_SUBDIR
    if not folder.is_dir():
        raise DataError(f"No HELP data folder at '{folder}'; {_fix_hint(root)}")
    for entry in help_manifest():
        path = help_file(entry.path, root)
        if verify_checksums and sha256_file(path) != entry.sha256:
            raise DataError(
                f"HELP data file '{path}' has the wrong sha256 (expected {entry.sha256}); "
                f"{_fix_hint(root)}"
            )
    return folder


def sha256_file(path: Path) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


Opener = Callable[..., Any]
"""`opener(url, timeout=seconds)` returning a context manager with `.read(n)`, like `urlopen`."""


def download_help(
    to: str | Path,
    *,
    base_url: str = HELP_BASE_URL,
    progress: bool = True,
    opener: Opener = urllib.request.urlopen,
    files: Iterable[str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download HELP's latency tables into `<to>/help/`, verifying each file.

    Each file is streamed to a temporary file in its destination folder, its
    size and sha256 are checked against the manifest, then it is renamed into
    place (atomic on POSIX), so an interrupted run never leaves a partial file
    under the final name. Files already present with the right checksum are
    skipped; present files with a wrong checksum are replaced.

    Args:
        to: the data directory (the folder that will hold `help/`), the same
            folder `LATPRED_DATA_DIR` should point at afterwards.
        base_url: address of HELP's `data/` folder; a manifest path is appended.
            `file://` addresses work too (offline mirrors, tests).
        progress: show a tqdm bar over the bytes to download.
        opener: function that opens a URL (`urllib.request.urlopen` signature).
        files: restrict to these manifest paths (e.g. `["fbnet/arch.pt"]`);
            `None` downloads every manifest file.
        timeout: per-request socket timeout in seconds.

    Returns:
        The `help/` folder, `<to>/help`.

    Raises:
        DataError: a requested path is not in the manifest, a download fails,
            or a downloaded file has the wrong size or sha256 (the temporary
            file is deleted; nothing is written under the final name).
    """
    root = Path(to).expanduser().resolve()
    folder = root / HELP_SUBDIR
    by_path = {e.path: e for e in help_manifest()}
    if files is None:
        entries = list(by_path.values())
    else:
        wanted = list(files)
        unknown = [p for p in wanted if p not in by_path]
        if unknown:
            raise DataError(f"Not in the HELP manifest: {unknown}; known paths: {sorted(by_path)}")
        entries = [by_path[p] for p in wanted]

    todo: list[ManifestEntry] = []
    for entry in entries:
        dest = folder / entry.path
        if (
            dest.is_file()
            and dest.stat().st_size == entry.size
            and sha256_file(dest) == entry.sha256
        ):
            logger.debug("HELP file '%s' already present and verified; skipping", dest)
            continue
        if dest.exists():
            logger.warning("HELP file '%s' exists but does not match the manifest; replacing", dest)
        todo.append(entry)

    base = base_url if base_url.endswith("/") else base_url + "/"
    with tqdm(
        total=sum(e.size for e in todo),
        unit="B",
        unit_scale=True,
        desc="HELP data",
        disable=not progress or not todo,
    ) as bar:
        for entry in todo:
            _download_one(base + entry.path, folder, entry, opener, timeout, bar)
    logger.info(
        "HELP data in '%s': %d file(s) downloaded, %d already present",
        folder,
        len(todo),
        len(entries) - len(todo),
    )
    return folder


def _download_one(
    url: str,
    folder: Path,
    entry: ManifestEntry,
    opener: Opener,
    timeout: float,
    bar: tqdm,
) -> None:
    """Stream `url` into a temp file next to its destination, verify it, rename it into place."""
    dest = folder / entry.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with opener(url, timeout=timeout) as response:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
            except OSError as exc:  # URLError, HTTPError, timeouts are OSErrors
                raise DataError(
                    f"Download of '{url}' failed: {exc}; check the network (or pass a "
                    f"reachable base_url) and rerun, or copy HELP's data/ folder to '{folder}'"
                ) from exc
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise DataError(
                f"Checksum mismatch for '{url}': got {size} bytes, sha256 {digest.hexdigest()}; "
                f"expected {entry.size} bytes, sha256 {entry.sha256}. The file was not saved; "
                "rerun the download, and if it persists the upstream file changed "
                "(regenerate the manifest only after checking the new file)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)

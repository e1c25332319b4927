"""Tests for predictor.datadir: data-dir resolution, checks, and the verified download."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from predictor import datadir
from predictor.datadir import (
    HELP_BASE_URL,
    download_help,
    help_dir,
    help_file,
    help_manifest,
    resolve_data_dir,
    sha256_file,
)
from predictor.errors import DataError

SMALL = ["nasbench201/hardware_embedding_index.pt", "fbnet/latency/pixel2.pt"]
CORRUPT = "fbnet/hardware_embedding_index.pt"


# ----------------------------------------------------------------------------- resolution


def test_resolve_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "ws" / "repo"
    (repo / "sub").mkdir(parents=True)
    monkeypatch.setattr(datadir, "REPO_ROOT", repo)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(datadir.ENV_VAR, raising=False)
    monkeypatch.chdir(repo / "sub")

    # nothing exists: the user cache
    assert resolve_data_dir() == (tmp_path / "home" / ".cache" / "latpred" / "data").resolve()
    # ./../shared/data relative to the cwd
    cwd_shared = repo / "shared" / "data"
    cwd_shared.mkdir(parents=True)
    assert resolve_data_dir() == cwd_shared.resolve()
    # <repo root>/../shared/data wins over the cwd one
    repo_shared = tmp_path / "ws" / "shared" / "data"
    repo_shared.mkdir(parents=True)
    assert resolve_data_dir() == repo_shared.resolve()
    # the environment variable wins over both
    monkeypatch.setenv(datadir.ENV_VAR, str(tmp_path / "env"))
    assert resolve_data_dir() == (tmp_path / "env").resolve()
    # an explicit argument wins over everything
    assert resolve_data_dir(tmp_path / "x") == (tmp_path / "x").resolve()
    assert resolve_data_dir(str(tmp_path / "y")) == (tmp_path / "y").resolve()


# ----------------------------------------------------------------------------- manifest and checks


def test_manifest_lists_the_used_files() -> None:
    paths = [e.path for e in help_manifest()]
    assert len(paths) == len(set(paths))
    for required in (
        "nasbench201/str_arch2idx.pt",
        "nasbench201/hardware_embedding_index.pt",
        "fbnet/metainfo.pt",
        "fbnet/arch.pt",
        "fbnet/hardware_embedding_index.pt",
    ):
        assert required in paths
    assert sum(p.startswith("nasbench201/latency/") for p in paths) == 27
    assert sum(p.startswith("fbnet/latency/") for p in paths) == 27
    assert all(len(e.sha256) == 64 and e.size > 0 for e in help_manifest())


def test_manifest_matches_shared_data(shared_data_dir: Path) -> None:
    assert help_dir(shared_data_dir, verify_checksums=True) == shared_data_dir / "help"


def test_help_dir_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"latpred data download --to") as err:
        help_dir(tmp_path)
    assert "LATPRED_DATA_DIR" in str(err.value)


def test_help_dir_names_missing_file(tmp_path: Path) -> None:
    (tmp_path / "help").mkdir()
    with pytest.raises(DataError, match=r"Missing HELP data file .*str_arch2idx\.pt"):
        help_dir(tmp_path)


def test_help_file_size_mismatch(tmp_path: Path) -> None:
    rel = "fbnet/hardware_embedding_index.pt"
    (tmp_path / "help" / "fbnet").mkdir(parents=True)
    (tmp_path / "help" / rel).write_bytes(b"short")
    with pytest.raises(DataError, match=r"5 bytes, expected 431"):
        help_file(rel, tmp_path)


# ----------------------------------------------------------------------------- download


@pytest.fixture
def mirror(tmp_path: Path, shared_data_dir: Path) -> Path:
    """A served copy of a few HELP files (one of them corrupted) laid out like HELP's data/."""
    root = tmp_path / "mirror"
    for rel in SMALL + [CORRUPT]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data_dir / "help" / rel, root / rel)
    data = bytearray((root / CORRUPT).read_bytes())
    data[-3] ^= 0xFF  # same size, different bytes
    (root / CORRUPT).write_bytes(bytes(data))
    return root


@pytest.fixture
def server(mirror: Path) -> Iterator[str]:
    """An http.server on 127.0.0.1 serving `mirror`; yields its base URL."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(mirror))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _no_leftovers(folder: Path) -> bool:
    return not any(p.name.endswith(".part") for p in folder.rglob("*"))


def test_download_over_http(tmp_path: Path, server: str, shared_data_dir: Path) -> None:
    calls: list[str] = []

    def opener(url: str, timeout: float) -> object:
        calls.append(url)
        return urllib.request.urlopen(url, timeout=timeout)

    to = tmp_path / "data"
    out = download_help(to, base_url=server, files=SMALL, progress=False, opener=opener)
    assert out == (to / "help").resolve()
    by_path = {e.path: e for e in help_manifest()}
    for rel in SMALL:
        assert sha256_file(out / rel) == by_path[rel].sha256
        assert (out / rel).read_bytes() == (shared_data_dir / "help" / rel).read_bytes()
    assert len(calls) == 2 and calls[0] == server + SMALL[0]
    assert _no_leftovers(out)

    # present and verified: skipped
    download_help(to, base_url=server, files=SMALL, progress=False, opener=opener)
    assert len(calls) == 2

    # present but altered: replaced
    (out / SMALL[0]).write_bytes(b"\0" * by_path[SMALL[0]].size)
    download_help(to, base_url=server.rstrip("/"), files=SMALL, progress=True, opener=opener)
    assert len(calls) == 3
    assert sha256_file(out / SMALL[0]) == by_path[SMALL[0]].sha256


def test_download_checksum_mismatch(tmp_path: Path, server: str) -> None:
    to = tmp_path / "data"
    with pytest.raises(DataError, match=r"Checksum mismatch for .*hardware_embedding_index\.pt"):
        download_help(to, base_url=server, files=[CORRUPT], progress=False)
    assert not (to / "help" / CORRUPT).exists()
    assert _no_leftovers(to)


def test_download_file_url(tmp_path: Path, mirror: Path) -> None:
    to = tmp_path / "data"
    download_help(to, base_url=mirror.as_uri(), files=SMALL, progress=False)
    assert help_file(SMALL[1], to).is_file()


def test_download_errors(tmp_path: Path, mirror: Path) -> None:
    with pytest.raises(DataError, match=r"Not in the HELP manifest: \['nope\.pt'\]"):
        download_help(tmp_path, files=["nope.pt"], progress=False)
    # a file the mirror does not have: the download error names the URL
    missing = "nasbench201/latency/pixel3.pt"
    with pytest.raises(DataError, match=r"Download of .*pixel3\.pt' failed"):
        download_help(tmp_path, base_url=mirror.as_uri(), files=[missing], progress=False)
    assert _no_leftovers(tmp_path)


def test_default_base_url() -> None:
    assert HELP_BASE_URL == "https://raw.githubusercontent.com/HayeonLee/HELP/main/data/"

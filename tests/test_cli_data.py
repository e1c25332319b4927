"""`latpred data ...`: real subprocess runs; bad data gives one line naming the file, exit 2.

Most bad-input runs stop at the data-directory check, before torch is imported, so
they take well under a second each.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from predictor.datadir import help_dir, help_manifest

TABLE = "nasbench201/latency/pixel2.pt"


def run_data(*args: str, env_data: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != "LATPRED_DATA_DIR"}
    if env_data is not None:
        env["LATPRED_DATA_DIR"] = str(env_data)
    return subprocess.run([sys.executable, "-m", "predictor.cli", "data", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("latpred: error:")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def copy_help(src: Path, dst: Path, paths: list[str] | None = None) -> Path:
    """Copy manifest files of `src/help` to `dst/help` (writable copies); returns `dst`."""
    for rel in paths if paths is not None else [e.path for e in help_manifest()]:
        target = dst / "help" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "help" / rel, target)
    return dst


@pytest.fixture
def data_copy(shared_data_dir: Path, tmp_path: Path) -> Path:
    """A full, writable copy of the shared data dir (~7 MB)."""
    return copy_help(shared_data_dir, tmp_path / "data")


# ----------------------------------------------------------------------------- good data


def test_info_lists_devices_and_splits(shared_data_dir: Path, tmp_path: Path) -> None:
    result = run_data("info", "--data-dir", str(shared_data_dir), "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"data dir: {shared_data_dir.resolve()}  (from --data-dir)" in out
    assert "nb201: 15625 architectures, 27 devices" in out
    assert "fbnet: 5000 architectures, 27 devices" in out
    assert re.search(r"titan_rtx_256\s+desktop_gpu\s+256\s+test", out)
    assert re.search(r"pixel3\s+mobile_phone\s+-\s+train", out)
    assert re.search(r"eyeriss\s+asic", out) and re.search(r"raspi4\s+embedded_board", out)
    assert "help (N0)" in out and "help (F0)" in out and "F5:" in out
    assert "not built" in out


def test_check_passes_on_shared_data(shared_data_dir: Path) -> None:
    result = run_data("check", env_data=shared_data_dir)  # the env var is honoured
    assert result.returncode == 0, result.stderr
    assert "sha256 verified" in result.stdout
    assert "nb201: OK, 15625 archs, 27 device tables" in result.stdout
    assert "pixel3 203, raspi4 201" in result.stdout  # near-zero entries are reported
    assert "fbnet: OK, 5000 archs, 27 device tables" in result.stdout


def test_build_then_reuse(shared_data_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ("build", "--space", "nb201", "--limit", "20", "--cache-dir", str(cache),
            "--data-dir", str(shared_data_dir), "--workers", "1")
    first = run_data(*args)
    assert first.returncode == 0, first.stderr
    assert "graphs" in first.stderr  # the progress bar
    line = first.stdout.splitlines()[0]
    assert line.startswith("nb201: 20 graphs,") and "wrote 4 cache file(s)" in line
    assert "unique nodes b1 " in line and " b256 " in line
    folder = Path(first.stdout.splitlines()[1].split("cache ", 1)[1])
    assert folder.parent == cache and len(list(folder.glob("b*.store"))) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in folder.iterdir()}

    second = run_data(*args, "-q")
    assert second.returncode == 0, second.stderr
    line2 = second.stdout.splitlines()[0]
    assert "all from cache" in line2 and second.stderr == ""
    assert line2.split(";")[0] == line.split(";")[0]  # the same summary
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes

    def seconds(text: str) -> float:
        return float(re.search(r"; ([\d.]+) s,", text).group(1))

    assert seconds(line2) <= seconds(line)


# ----------------------------------------------------------------------------- bad data


@pytest.mark.parametrize("command", ["check", "info", "build"])
def test_missing_data_dir(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "nope"
    message = assert_one_line_error(run_data(command, "--data-dir", str(missing)),
                                    f"No HELP data folder at '{missing / 'help'}'")
    assert "latpred data download --to" in message and "LATPRED_DATA_DIR" in message


def test_missing_data_dir_from_env(tmp_path: Path) -> None:
    assert_one_line_error(run_data("check", env_data=tmp_path / "env"), str(tmp_path / "env"))


@pytest.mark.parametrize("command", ["check", "build"])
def test_partial_data_dir(shared_data_dir: Path, tmp_path: Path, command: str) -> None:
    partial = copy_help(shared_data_dir, tmp_path / "data",
                        ["nasbench201/str_arch2idx.pt", "fbnet/arch.pt", TABLE])
    missing = [e.path for e in help_manifest() if not (partial / "help" / e.path).exists()]
    assert_one_line_error(run_data(command, "--data-dir", str(partial)),
                          "Missing HELP data file", missing[0])


@pytest.mark.parametrize("command", ["check", "build"])
def test_corrupt_table(data_copy: Path, command: str) -> None:
    (data_copy / "help" / TABLE).write_bytes(b"\x00garbage, not a pickle\n" * 50)
    assert_one_line_error(run_data(command, "--data-dir", str(data_copy)),
                          str(data_copy / "help" / TABLE), "partial or altered download")


@pytest.mark.parametrize("command", ["check", "build"])
def test_corrupt_table_same_size(data_copy: Path, command: str) -> None:
    """Garbage of the right size: `check` catches the sha256, `build` the failed load."""
    path = data_copy / "help" / TABLE
    path.write_bytes(b"\x07" * path.stat().st_size)
    expected = "wrong sha256" if command == "check" else "Cannot load HELP data file"
    assert_one_line_error(run_data(command, "--data-dir", str(data_copy)), str(path), expected)


@pytest.mark.parametrize("command", ["check", "build"])
def test_table_of_wrong_length(data_copy: Path, command: str) -> None:
    path = data_copy / "help" / TABLE
    torch.save([1.0] * 100, path)
    assert_one_line_error(run_data(command, "--data-dir", str(data_copy)), str(path))


def test_bad_build_arguments(shared_data_dir: Path) -> None:
    data = ("--data-dir", str(shared_data_dir))
    assert_one_line_error(run_data("build", "--limit", "0", *data), "--limit")
    assert_one_line_error(run_data("build", "--batch-sizes", "0", *data), "--batch-sizes")


def test_bad_model_set_cost_range() -> None:
    from predictor.model_sets import set_dir

    result = run_data("model-set", "create", "no-such-set-35", "--macs", "5e9,1e8")
    assert_one_line_error(result, "--macs", "LOW,HIGH")
    assert not set_dir("no-such-set-35").exists()


# ----------------------------------------------------------------------------- download


def test_download_from_file_url(shared_data_dir: Path, tmp_path: Path) -> None:
    mirror = copy_help(shared_data_dir, tmp_path / "mirror") / "help"
    to = tmp_path / "data"
    result = run_data("download", "--to", str(to), "--base-url", mirror.as_uri(), "-q")
    assert result.returncode == 0, result.stderr
    assert f"HELP data in {to / 'help'}: {len(help_manifest())} file(s) present" in result.stdout
    assert f"export LATPRED_DATA_DIR={to}" in result.stdout
    assert help_dir(to, verify_checksums=True) == to / "help"

    # some files only
    some = tmp_path / "some"
    result = run_data("download", "--to", str(some), "--base-url", mirror.as_uri(), "-q",
                      "--files", "fbnet/arch.pt", TABLE)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (some / "help").rglob("*.pt")) == ["arch.pt", "pixel2.pt"]


def test_download_errors(shared_data_dir: Path, tmp_path: Path) -> None:
    mirror = copy_help(shared_data_dir, tmp_path / "mirror", [TABLE]) / "help"
    to = tmp_path / "data"
    # a file the mirror lacks: the error names its URL, nothing partial is left
    assert_one_line_error(
        run_data("download", "--to", str(to), "--base-url", mirror.as_uri(), "-q"),
        "Download of", "failed")
    assert not any(p.name.endswith(".part") for p in to.rglob("*"))
    # an altered file on the mirror: checksum mismatch, not saved
    (mirror / TABLE).write_bytes(b"x" * 10)
    assert_one_line_error(
        run_data("download", "--to", str(to), "--base-url", mirror.as_uri(), "-q",
                 "--files", TABLE),
        "Checksum mismatch", "pixel2.pt")
    assert not (to / "help" / TABLE).exists()
    assert_one_line_error(run_data("download", "--to", str(to), "--files", "nope.pt"),
                          "Not in the HELP manifest")

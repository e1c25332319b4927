"""`latpred generate`: a real subprocess run writes the ONNX files and specs.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from predictor.cli import main


def test_generate_writes_models_and_specs(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    result = subprocess.run(
        [sys.executable, "-m", "predictor.cli", "generate", "--seed", "5", "--count", "3",
         "--out", str(out), "--kinds", "transformer", "--small", "--no-progress"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    specs = json.loads((out / "specs.json").read_text())
    assert len(specs) == 3 and {s["kind"] for s in specs} == {"transformer"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s['name']}.onnx" for s in specs] + ["specs.json"])  # no temp files left


def test_generate_without_seed_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["generate", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seed" in err[0]

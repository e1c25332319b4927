"""Regenerate `predictor/resources/help_manifest.json` from a local copy of HELP's data.

Only paths, sha256 digests and sizes go into the manifest; the data files
themselves are never copied into the repository.

Usage:
    python scripts/make_help_manifest.py [--help-dir ../shared/data/help]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "predictor" / "resources" / "help_manifest.json"

# Files the package reads, relative to HELP's data/ folder. The latency tables
# are globbed. `nasbench201/architecture.pt` and `nasbench201/nasbench201.pt`
# are left out on purpose: they are large, unused by the package, and empty
# in the shared copy.
FIXED = [
    "nasbench201/str_arch2idx.pt",
    "nasbench201/hardware_embedding_index.pt",
    "nasbench201/arch_generated_by_metad2a.txt",
    "fbnet/metainfo.pt",
    "fbnet/arch.pt",
    "fbnet/hardware_embedding_index.pt",
]
GLOBS = ["nasbench201/latency/*.pt", "fbnet/latency/*.pt"]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(help_dir: Path) -> dict:
    """Manifest dict (`source`, `files`: path, sha256, size in bytes) for `help_dir`."""
    rels = list(FIXED)
    for pattern in GLOBS:
        found = sorted(p.relative_to(help_dir).as_posix() for p in help_dir.glob(pattern))
        if not found:
            raise SystemExit(f"No files match '{pattern}' under '{help_dir}'; wrong --help-dir?")
        rels += found
    files = []
    for rel in rels:
        path = help_dir / rel
        if not path.is_file() or path.stat().st_size == 0:
            raise SystemExit(f"Missing or empty HELP file '{path}'; fix the local copy first")
        files.append({"path": rel, "sha256": sha256_file(path), "size": path.stat().st_size})
    return {
        "source": "https://github.com/HayeonLee/HELP (data/), MIT licence",
        "base_url": "https://raw.githubusercontent.com/HayeonLee/HELP/main/data/",
        "files": files,
    }


def _dumps(manifest: dict) -> str:
    """JSON text with one file entry per line (short diffs when a file changes)."""
    head = {k: v for k, v in manifest.items() if k != "files"}
    lines = [json.dumps(head, indent=1)[:-2] + ",", ' "files": [']
    rows = [f"  {json.dumps(f)}" for f in manifest["files"]]
    lines.append(",\n".join(rows))
    lines.append(" ]\n}\n")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, write the manifest, print a one-line summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--help-dir",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data" / "help",
        help="local copy of HELP's data/ folder",
    )
    args = parser.parse_args()
    manifest = build(args.help_dir.resolve())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(_dumps(manifest), encoding="utf-8")
    total = sum(f["size"] for f in manifest["files"])
    print(f"wrote {OUT} ({len(manifest['files'])} files, {total} bytes)")


if __name__ == "__main__":
    main()

"""Stop 43: H2's suite files against the shipped checkpoint's (`../stop37/H/`), the
figures stop 40's rules 2-8 read (`../stop40/RULES.md`).

    python results/valid/stop43/compare_suite.py results/valid/stop37/H results/valid/stop43/H2
"""
import re
import sys
from pathlib import Path


def auto_mape(path: Path) -> float | None:
    """Mean over cases of the "latpred+auto" MAPE of a `benchmark_local_device.py` file."""
    text = path.read_text()
    part = text.split("mape (mean over seeds)")[-1] if "mape (mean over seeds)" in text else ""
    part = part.strip().split("\n\n")[0]  # that table only
    rows = re.findall(r"^\| (?:[abc]: [^|]+|10 -> rest) \| ([\d.]+) \|", part, re.M)
    return sum(map(float, rows)) / len(rows) if rows else None


def first_column_mape(path: Path) -> float | None:
    """The first column's value in the `| mape |` row of a known-networks file."""
    m = re.search(r"^\| mape \| ([\d.]+) \|", path.read_text(), re.M)
    return float(m.group(1)) if m else None


def auto_spearman(path: Path) -> float | None:
    """The "latpred+auto" column of the mean-Spearman row of a few-shot file."""
    lines = path.read_text().splitlines()
    header = next((line for line in lines if line.startswith("| device |")), None)
    row = next((line for line in lines if line.startswith("| **mean spearman**")), None)
    if header is None or row is None:
        return None
    names = [c.strip() for c in header.strip("|").split("|")]
    values = [c.strip() for c in row.strip("|").split("|")]
    return float(values[names.index("latpred+auto")])


def hw_spearman(path: Path) -> float | None:
    m = re.search(r"^\| \*\*mean spearman\*\* \| ([\d.]+) \|", path.read_text(), re.M)
    return float(m.group(1)) if m else None


def search_mean(path: Path) -> str | None:
    m = re.search(r"^\| \*\*mean\*\* \|(.*)$", path.read_text(), re.M)
    return m.group(1).strip() if m else None


old_dir, new_dir = Path(sys.argv[1]), Path(sys.argv[2])
for new in sorted(new_dir.glob("*.txt")):
    old = old_dir / new.name
    if not old.is_file():
        continue
    name = new.name
    if name.startswith("local_"):
        a, b, what = auto_mape(old), auto_mape(new), "auto MAPE % (mean of a/b/c)"
    elif name.startswith("known_"):
        a, b, what = first_column_mape(old), first_column_mape(new), "first column MAPE %"
    elif name in ("nb201.txt", "fbnet.txt"):
        a, b, what = auto_spearman(old), auto_spearman(new), "auto Spearman"
    elif name == "hw.txt":
        a, b, what = hw_spearman(old), hw_spearman(new), "auto Spearman"
    elif name == "search.txt":
        print(f"{name:40s} mean row: shipped {search_mean(old)}\n{'':40s}          H2      "
              f"{search_mean(new)}")
        continue
    else:
        continue
    delta = "" if a is None or b is None else f"{b - a:+.3f}"
    print(f"{name:40s} {what:28s} shipped {a}  H2 {b}  {delta}")

"""Task splits (meta-train / meta-valid / meta-test devices), as data (`resources/splits.yaml`).

Shipped splits:
    nb201: "help" (alias "N0"), HELP's standard split.
    fbnet: "help" (alias "F0"), HELP's standard split, and NASFLAT's "F1".."F5".

NASFLAT publishes no validation devices for F1..F5, so their `valid` is
empty; select models there on HELP's meta-valid devices (`get_split(space,
"help").valid`) that the task does not use, or on held-out architectures.

Example:
    >>> get_split("fbnet", "F0").test
    ('fpga', 'raspi4', 'eyeriss')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from predictor.errors import DataError
from predictor.tables import SPACES, check_space

logger = logging.getLogger(__name__)

SPLITS_PATH = Path(__file__).resolve().parent / "resources" / "splits.yaml"
ROLES: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class Split:
    """Which devices play which role in one meta-learning task.

    Attributes:
        space: search space, "nb201" or "fbnet".
        name: canonical split name, e.g. "help" or "F3".
        train: meta-training devices.
        valid: meta-validation (model selection) devices; may be empty.
        test: devices the predictor is scored on, unseen during training.
        aliases: other names of the split, e.g. ("F0",).
    """

    space: str
    name: str
    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    @property
    def devices(self) -> tuple[str, ...]:
        """All devices of the split: train, then valid, then test."""
        return self.train + self.valid + self.test


def _parse(space: str, name: str, raw: Any, path: Path) -> Split:
    if not isinstance(raw, dict):
        raise DataError(f"Split file '{path}': {space}/{name} is not a mapping")
    unknown = sorted(set(raw) - set(ROLES) - {"aliases"})
    if unknown:
        raise DataError(
            f"Split file '{path}': {space}/{name} has unknown key(s) {unknown}; "
            f"allowed: {[*ROLES, 'aliases']}"
        )
    roles = {role: tuple(str(d) for d in raw.get(role) or ()) for role in ROLES}
    if not roles["train"] or not roles["test"]:
        raise DataError(f"Split file '{path}': {space}/{name} needs non-empty train and test")
    seen: dict[str, str] = {}
    for role in ROLES:
        for device in roles[role]:
            if device in seen:
                raise DataError(
                    f"Split file '{path}': device '{device}' is in both '{seen[device]}' "
                    f"and '{role}' of {space}/{name}; a device may play one role only"
                )
            seen[device] = role
    return Split(
        space=space,
        name=str(name),
        aliases=tuple(str(a) for a in raw.get("aliases") or ()),
        **roles,
    )


def load_splits(path: str | Path = SPLITS_PATH) -> dict[str, dict[str, Split]]:
    """Read and validate a split file.

    Returns:
        `{space: {name: Split}}` with canonical names only (aliases live on the Split).

    Raises:
        DataError: unreadable file, unknown space or key, empty train/test,
            a device in two roles, or a name/alias used twice in a space.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"Cannot read the split file '{path}': {exc}") from exc
    if not isinstance(doc, dict):
        raise DataError(f"Split file '{path}' must map spaces to splits")
    out: dict[str, dict[str, Split]] = {}
    for space, entries in doc.items():
        if space not in SPACES:
            raise DataError(f"Split file '{path}': unknown space '{space}'; known: {list(SPACES)}")
        out[space] = {}
        names: set[str] = set()
        for name, raw in (entries or {}).items():
            split = _parse(space, str(name), raw, path)
            for label in (split.name, *split.aliases):
                if label in names:
                    raise DataError(f"Split file '{path}': name '{label}' used twice in {space}")
                names.add(label)
            out[space][split.name] = split
    return out


@lru_cache(maxsize=1)
def _splits() -> dict[str, dict[str, Split]]:
    return load_splits()


def list_splits(space: str) -> list[Split]:
    """All splits of a space, in file order.

    Raises:
        DataError: unknown space.
    """
    check_space(space)
    return list(_splits().get(space, {}).values())


def get_split(space: str, name: str = "help") -> Split:
    """A split by name or alias ("help" == "N0" for nb201, "help" == "F0" for fbnet).

    Raises:
        DataError: unknown space, or no split of that name (lists the known names).
    """
    check_space(space)
    for split in _splits().get(space, {}).values():
        if name == split.name or name in split.aliases:
            return split
    known = [label for s in list_splits(space) for label in (s.name, *s.aliases)]
    raise DataError(f"Unknown split '{name}' for space '{space}'; known: {known}")

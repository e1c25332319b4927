"""Typed exceptions: each names the bad input and, where there is one, the fix.

Every error the package raises on bad user input derives from `PredictorError`,
so the CLI can turn it into one clear line and a non-zero exit code.
"""

from __future__ import annotations


class PredictorError(Exception):
    """Base class of every user-facing error of the package."""


class ModelNotFoundError(PredictorError, FileNotFoundError):
    """A model path that does not exist."""


class InvalidModelError(PredictorError, ValueError):
    """A file or object that is not a valid ONNX model (or cannot be exported to one)."""


class EmptyGraphError(InvalidModelError):
    """A model with no compute operator."""


class DynamicShapeError(PredictorError, ValueError):
    """Shapes that stay unknown after shape inference; fix with an explicit input shape."""


class UnsupportedOpError(PredictorError, ValueError):
    """An operator a particular consumer (e.g. an FPGA metric) cannot handle."""


class SchemaMismatchError(PredictorError, ValueError):
    """A feature schema (e.g. stored in a checkpoint) that differs from the package's."""


class InvalidArchError(PredictorError, ValueError):
    """A search-space architecture spec that is malformed or uses unknown operations."""


class FpgaConfigError(PredictorError, ValueError):
    """An FPGA synthesis configuration (precision, reuse factor, strategy) out of range."""


class DataError(PredictorError, ValueError):
    """A missing, partial or corrupt data directory, table or cache entry."""


class MeasurementError(PredictorError, RuntimeError):
    """A model that cannot be timed here: bad option, missing backend or device, runtime failure."""


class UnknownDeviceError(PredictorError, KeyError):
    """A device name that is neither in the registry nor calibrated."""

    def __str__(self) -> str:  # KeyError would otherwise print the message quoted
        return str(self.args[0]) if self.args else ""


def known_names(name: str, known, listed: int = 12) -> str:
    """The known names for an error about an unknown `name`: all of them when there are at
    most `listed`, else the closest (by spelling, then by shared prefix) and the count, so
    that the error stays one readable line."""
    import difflib

    names = sorted(known)
    if len(names) <= listed:
        return f"known: {names}"
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    stem = name.split("@")[0].split("_")[0].lower()
    close += [n for n in names if stem and n.lower().startswith(stem) and n not in close]
    if close:
        return f"closest known: {close[:5]} ({len(names)} in all)"
    return f"{len(names)} known, e.g. {names[:5]}"


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for one-line error reports."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"

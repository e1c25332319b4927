"""Search spaces of your own: register a builder, then predict, calibrate and search by arch.

    from predictor.spaces.custom import register_space

    def build(arch: str, input_shape, num_classes):  # -> torch module, ONNX model or path
        return MyNet(arch.split("-"), num_classes)

    register_space("mynet", build, input_shape=(1, 3, 64, 64), num_classes=10,
                   options=("k3", "k5", "skip"), positions=12)
    p.predict_batch("mynet", ["k3-k5-...", ...], "myboard")  # ms, as for nb201 / fbnet
    search_device(p, "mynet", "myboard", budget_ms=4.0)       # needs options and positions

NB201 and FBNet assemble graphs from per-segment templates; a registered space has none:
each distinct (arch, input shape, classes) is built once, extracted by the general path
(`predictor.graph.extract_graph`) and cached, so a new arch costs one build and
extraction (a torch module is exported to ONNX first) and a repeated one nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from predictor.errors import InvalidArchError, PredictorError, first_line
from predictor.graph import OpGraph, extract_graph

BUILT_IN = ("nb201", "fbnet")
GRAPH_CACHE_SIZE = 16_384  # extracted graphs kept per process (a few KB each)

Builder = Callable[[str, tuple[int, ...], int], Any]


@dataclass(frozen=True)
class CustomSpace:
    """A registered search space.

    Attributes:
        build: (arch string, input shape, classes) -> the network: a torch module (run on
            a zero tensor of the input shape), an ONNX path / bytes / `onnx.ModelProto`,
            or an `OpGraph`.
        input_shape, num_classes: the default setting (the input shape's dim 0 is the
            batch).
        options, positions: for search, each of `positions` slots holds one of
            `options`, and an arch string is the options joined by `separator`; without
            them the space predicts and calibrates but cannot be searched.
    """

    name: str
    build: Builder
    input_shape: tuple[int, ...]
    num_classes: int
    options: tuple[str, ...] = ()
    positions: int = 0
    separator: str = "-"

    def arch_key(self, arch: str | Sequence[str]) -> str:
        """The arch string of `arch` (a string, or a sequence of option names)."""
        if isinstance(arch, str):
            key = arch
        elif isinstance(arch, Sequence) and all(isinstance(a, str) for a in arch):
            key = self.separator.join(arch)
        else:
            raise InvalidArchError(f"Arch {arch!r} of space '{self.name}': expected a string "
                                   f"or a sequence of option names")
        if self.options:
            self.genes(key)  # validates against the options
        return key

    def genes(self, key: str) -> tuple[int, ...]:
        """The option index per position of arch string `key` (spaces with options)."""
        names = key.split(self.separator)
        if len(names) != self.positions:
            raise InvalidArchError(f"Arch {key!r} of space '{self.name}': {len(names)} "
                                   f"positions, expected {self.positions}")
        unknown = [n for n in names if n not in self.options]
        if unknown:
            raise InvalidArchError(f"Arch {key!r} of space '{self.name}': unknown option "
                                   f"{unknown[0]!r}; options: {list(self.options)}")
        return tuple(self.options.index(n) for n in names)

    def graph(self, arch: str | Sequence[str], input_shape: Sequence[int] | None = None,
              num_classes: int | None = None) -> OpGraph:
        """The operator graph of `arch` (built and extracted once per setting)."""
        key = self.arch_key(arch)
        shape = tuple(int(d) for d in (input_shape or self.input_shape))
        classes = int(num_classes or self.num_classes)
        cache_key = (self.name, key, shape, classes)
        with _LOCK:  # the service predicts from several threads
            graph = _GRAPHS.get(cache_key)
            if graph is not None:
                _GRAPHS.move_to_end(cache_key)
                return graph
        graph = _extract(self, key, shape, classes)
        with _LOCK:
            _GRAPHS[cache_key] = graph
            if len(_GRAPHS) > GRAPH_CACHE_SIZE:
                _GRAPHS.popitem(last=False)
        return graph


_SPACES: dict[str, CustomSpace] = {}
_GRAPHS: OrderedDict[tuple, OpGraph] = OrderedDict()
_LOCK = threading.Lock()


def _extract(space: CustomSpace, key: str, shape: tuple[int, ...], classes: int) -> OpGraph:
    import torch

    try:
        net = space.build(key, shape, classes)
    except Exception as exc:  # the user's builder: any failure names the arch
        raise InvalidArchError(f"Arch {key!r} of space '{space.name}': the builder failed: "
                               f"{first_line(exc)}") from exc
    if isinstance(net, OpGraph):
        return net
    if isinstance(net, torch.nn.Module):
        return extract_graph(net, example_input=torch.zeros(shape))
    return extract_graph(net, input_shape=shape)


def register_space(name: str, build: Builder, *, input_shape: Sequence[int],
                   num_classes: int, options: Sequence[str] = (), positions: int = 0,
                   separator: str = "-") -> CustomSpace:
    """Register search space `name` (see `CustomSpace`); registering a name again
    replaces the space and forgets its cached graphs."""
    if name in BUILT_IN:
        raise PredictorError(f"Search space '{name}' is built in; register yours under "
                             "another name")
    if not name or not isinstance(name, str):
        raise PredictorError(f"Bad search space name {name!r}")
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise PredictorError(f"Space '{name}': bad input shape {input_shape!r}")
    if int(num_classes) < 1:
        raise PredictorError(f"Space '{name}': num_classes must be >= 1, got {num_classes}")
    options = tuple(options)
    if bool(options) != (positions > 0) or (options and len(options) < 2):
        raise PredictorError(f"Space '{name}': give both options (at least 2) and "
                             "positions >= 1 to search it, or neither")
    if any(not o or separator in o for o in options):
        raise PredictorError(f"Space '{name}': option names must be non-empty and free of "
                             f"the separator {separator!r}")
    unregister_space(name)
    space = CustomSpace(name, build, shape, int(num_classes), options, int(positions),
                        separator)
    _SPACES[name] = space
    return space


def unregister_space(name: str) -> None:
    """Forget a registered space and its cached graphs (no error if unknown)."""
    _SPACES.pop(name, None)
    with _LOCK:
        for key in [k for k in _GRAPHS if k[0] == name]:
            del _GRAPHS[key]


def custom_space(name: str) -> CustomSpace | None:
    """The registered space `name`, or None (built-in or unknown)."""
    return _SPACES.get(name)


def registered_spaces() -> list[str]:
    return sorted(_SPACES)


def unknown_space_message(name: str) -> str:
    return (f"Unknown search space '{name}'; known: {[*BUILT_IN, *registered_spaces()]} "
            "(register your own with predictor.spaces.custom.register_space; from the CLI, "
            "in a file given as --plugin FILE.py)")


def space_setting(name: str) -> tuple[tuple[int, ...], int]:
    """The default (input shape, classes) of a built-in or registered space."""
    custom = custom_space(name)
    if custom is not None:
        return custom.input_shape, custom.num_classes
    if name not in BUILT_IN:
        raise PredictorError(unknown_space_message(name))
    from predictor.corpus import get_space

    spec = get_space(name)
    return spec.input_shape, spec.num_classes


def load_plugins(plugins: Sequence[str] | None) -> None:
    """Import each plugin (a .py file or a module name) so that the spaces it registers
    are known (`latpred ... --plugin myspaces.py`)."""
    import importlib
    import importlib.util
    from pathlib import Path

    for plugin in plugins or ():
        try:
            if plugin.endswith(".py"):
                path = Path(plugin)
                if not path.is_file():
                    raise PredictorError(f"Plugin file not found: {plugin}")
                spec = importlib.util.spec_from_file_location(f"latpred_plugin_{path.stem}",
                                                              path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                importlib.import_module(plugin)
        except PredictorError:
            raise
        except Exception as exc:  # the user's code: one clear line
            raise PredictorError(f"Plugin {plugin} failed to load: {first_line(exc)}") from exc

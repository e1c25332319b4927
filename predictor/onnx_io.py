"""Model input: any source (path, bytes, `onnx.ModelProto`, torch module) to a shape-inferred ONNX model.

The predictor only needs tensor *shapes*, never weight values, so large initializers
are replaced by shape-only graph inputs before shape inference: that keeps extraction
of a ResNet-50 well under a tenth of a second and lets models with external weight
files be read without those files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from predictor.errors import DynamicShapeError, InvalidModelError, ModelNotFoundError

if TYPE_CHECKING:  # torch is imported lazily: reading ONNX files must not pay for it
    import torch

log = logging.getLogger(__name__)

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto, "torch.nn.Module"]
Shape = tuple[int, ...]
InputShapes = Sequence[int] | Mapping[str, Sequence[int]] | None

# Initializers with more elements than this are replaced by shape-only inputs before
# shape inference; small ones (shape tensors of Reshape, axes, ...) keep their values
# because shape inference needs them (data propagation).
_KEEP_INITIALIZER_ELEMENTS = 64
# doc_string that marks a graph input standing in for a stripped initializer.
WEIGHT_MARK = "latpred:weight"


def parse_shape(text: str) -> Shape:
    """Parse ``"1,3,224,224"`` (or ``1x3x224x224``) into a tuple of positive ints."""
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise DynamicShapeError(
            f"Bad input shape {text!r}: expected comma-separated positive integers like 1,3,224,224"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise DynamicShapeError(
            f"Bad input shape {text!r}: expected comma-separated positive integers like 1,3,224,224"
        )
    return shape


def expand_model_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """CLI model arguments as files: a folder stands for its ``*.onnx`` files (sorted, not
    recursive); files are kept as given, existing or not (loading names a missing one).

    Raises:
        ModelNotFoundError: a folder holds no ``.onnx`` file.
    """
    out: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(item.glob("*.onnx"))
            if not found:
                raise ModelNotFoundError(f"No .onnx files in folder {item}")
            out += found
        else:
            out.append(item)
    return out


def parse_input_shapes(values: str | Sequence[str] | None) -> InputShapes:
    """Parse `--input-shape` values: one ``SHAPE`` (the first input's), or ``NAME=SHAPE``
    per input (e.g. ``input_ids=1,128``); inputs left out take the sizes of the dims they
    share by name with given ones (see `resolve_input_shapes`)."""
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    if not values:
        return None
    named = [v for v in values if "=" in v]
    if not named:
        if len(values) > 1:
            raise DynamicShapeError(
                f"Several input shapes {values}: name each one's input, e.g. "
                "--input-shape input_ids=1,128 --input-shape pixel_values=1,3,224,224")
        return parse_shape(values[0])
    if len(named) < len(values):
        raise DynamicShapeError(
            f"Input shapes {values} mix named and unnamed ones: name each one's input, "
            "e.g. --input-shape input_ids=1,128")
    shapes: dict[str, Shape] = {}
    for value in values:
        name, _, text = value.partition("=")
        name = name.strip()
        if not name or name in shapes:
            raise DynamicShapeError(f"Bad input shape {value!r}: expected NAME=SHAPE with "
                                    "a distinct input name, e.g. input_ids=1,128")
        shapes[name] = parse_shape(text)
    return shapes


def export_torch(module: torch.nn.Module, example_input: Any) -> onnx.ModelProto:
    """Export a torch module in eval mode to ONNX (legacy exporter: fast, folds BatchNorm).

    Args:
        module: the network; it is put in eval mode, as for inference.
        example_input: a tensor or tuple of tensors with the shapes to predict for.
    """

    if example_input is None:
        raise InvalidModelError(
            f"A torch module ({type(module).__name__}) needs an example input to export to ONNX"
        )
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    buffer = io.BytesIO()
    was_training = module.training
    module.eval()
    try:
        try:
            _torch_export(module, args, buffer, dynamo=False)
        except Exception as legacy_exc:
            # Some modules (fused fast paths such as TransformerEncoderLayer in eval mode)
            # only export through the slower torch.export-based exporter.
            log.info("Legacy ONNX export failed (%s); retrying with dynamo=True", legacy_exc)
            buffer = io.BytesIO()
            _torch_export(module, args, buffer, dynamo=True)
    except Exception as exc:  # the exporter raises many types; one clear message
        raise InvalidModelError(
            f"Could not export {type(module).__name__} to ONNX: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    finally:
        module.train(was_training)
    return onnx.load_model_from_string(buffer.getvalue())


def _torch_export(module: torch.nn.Module, args: tuple, buffer: io.BytesIO, dynamo: bool) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # deprecation notices of the legacy exporter
        if dynamo:
            program = torch.onnx.export(module, args, dynamo=True, verbose=False)
            buffer.write(program.model_proto.SerializeToString())
        else:
            torch.onnx.export(module, args, buffer, dynamo=False, do_constant_folding=True)


def read_model(source: ModelSource, example_input: Any = None) -> onnx.ModelProto:
    """Read a model from a path, bytes, a ModelProto or a torch module (without weights data).

    Raises:
        ModelNotFoundError: the path does not exist.
        InvalidModelError: the bytes are not an ONNX model, or export failed.
    """
    if isinstance(source, onnx.ModelProto):
        model = source
        name = "<ModelProto>"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model = _parse(bytes(source), "<bytes>")
        name = "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ModelNotFoundError(f"{path} is a folder, not an ONNX file; pass its files "
                                     f"(the CLI takes a folder for its .onnx files)")
        if not path.is_file():
            raise ModelNotFoundError(f"Model file not found: {path}")
        model = _parse(path.read_bytes(), str(path))
        name = str(path)
    elif _is_torch_module(source):
        model = export_torch(source, example_input)
        name = type(source).__name__
    else:
        raise InvalidModelError(
            f"Unsupported model type {type(source).__name__}: pass an ONNX path, bytes, "
            "an onnx.ModelProto or a torch.nn.Module with an example input"
        )
    if len(model.graph.node) == 0:
        from predictor.errors import EmptyGraphError

        raise EmptyGraphError(f"{name}: the ONNX graph has no nodes")
    return model


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(obj, torch.nn.Module)


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    if not data:
        raise InvalidModelError(f"{name}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidModelError(
            f"{name}: not a valid ONNX model (protobuf decoding failed: {exc}); "
            "the file may be truncated or of another format"
        ) from None
    # Arbitrary bytes sometimes decode as a protobuf message; a real model has a graph
    # and an opset. Check that before trusting anything else.
    if not model.HasField("graph") or not model.opset_import:
        raise InvalidModelError(f"{name}: not a valid ONNX model (no graph or opset found)")
    return model


def _strip_large_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy `model` with large initializers turned into shape-only graph inputs."""
    stripped = onnx.ModelProto()
    stripped.ir_version = model.ir_version
    stripped.opset_import.extend(model.opset_import)
    graph = stripped.graph
    src = model.graph
    graph.name = src.name
    graph.node.extend(src.node)
    graph.output.extend(src.output)
    graph.value_info.extend(src.value_info)
    init_names = set()
    weight_inputs = []
    for init in src.initializer:
        init_names.add(init.name)
        numel = 1
        for d in init.dims:
            numel *= d
        if numel <= _KEEP_INITIALIZER_ELEMENTS and init.data_location != TensorProto.EXTERNAL:
            graph.initializer.append(init)
        else:
            weight_inputs.append(helper.make_tensor_value_info(
                init.name, init.data_type, list(init.dims), doc_string=WEIGHT_MARK))
    graph.input.extend(i for i in src.input if i.name not in init_names)
    graph.input.extend(weight_inputs)
    return stripped


def declared_dims(value_info: onnx.ValueInfoProto) -> list[int | str] | None:
    """Dims of a graph input: an int when fixed, the dim's name ('?' if unnamed) when not;
    None for an unknown rank."""
    if not value_info.type.HasField("tensor_type"):
        raise InvalidModelError(f"Input '{value_info.name}' is not a tensor; only tensor "
                                "inputs are supported")
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in tensor_type.shape.dim]


def _example_shape(dims: list[int | str] | None) -> str:
    """A plausible fixed shape for an input, for error messages (224 x 224 images, 128
    tokens)."""
    dims = dims or ["?", "?", "?", "?"]
    image = len(dims) == 4
    sizes = [d if isinstance(d, int) else
             1 if i == 0 else 3 if image and i == 1 else 224 if image else 128
             for i, d in enumerate(dims)]
    return ",".join(map(str, sizes))


def resolve_input_shapes(inputs: Sequence[onnx.ValueInfoProto], given: InputShapes,
                         batch: int | None = None, override: bool = False
                         ) -> dict[str, Shape]:
    """The fixed shape of every run-time input.

    Args:
        given: a shape for the first input, or a mapping input name -> shape.
        batch: overrides dim 0 of every input.
        override: a given size may replace a fixed one (the graph is re-inferred, e.g. at
            another resolution); without it that is an error (a runtime would reject it).

    A dynamic dim that no given shape covers takes the size of a given dim of the same
    name in any input (ONNX names equal sizes alike: ``batch``, ``sequence``), so
    `input_ids=1,128` also fixes `attention_mask` and `token_type_ids`.

    Raises:
        DynamicShapeError: an unknown input name, a rank or size mismatch, or a dim that
            stays dynamic (the message names the input and an example shape to give).
    """
    inputs = list(inputs)
    by_name = {v.name: v for v in inputs}
    if given is None:
        wanted: dict[str, Shape] = {}
    elif isinstance(given, Mapping):
        unknown = sorted(set(given) - set(by_name))
        if unknown:
            raise DynamicShapeError(f"Unknown input '{unknown[0]}'; the model's inputs are "
                                    f"{[v.name for v in inputs]}")
        wanted = {k: tuple(int(d) for d in v) for k, v in given.items()}
    elif not inputs:
        raise DynamicShapeError("The model has no run-time input to give a shape to")
    else:
        wanted = {inputs[0].name: tuple(int(d) for d in given)}
    declared = {v.name: declared_dims(v) for v in inputs}
    targets: dict[str, list[int | str]] = {}
    named: dict[str, int] = {}
    for name, dims in declared.items():
        if name in wanted:
            shape = wanted[name]
            if dims is not None and len(dims) != len(shape):
                raise DynamicShapeError(
                    f"Input '{name}' has rank {len(dims)}, but the given shape "
                    f"{','.join(map(str, shape))} has rank {len(shape)}")
            target: list[int | str] = list(shape)
        elif dims is None:
            raise DynamicShapeError(f"Input '{name}' has an unknown rank; give its shape, "
                                    f"e.g. --input-shape {_shape_hint(name, None, inputs)}")
        else:
            target = list(dims)
        if batch is not None and target:
            target[0] = batch
        for i, (want, have) in enumerate(zip(dims or target, target, strict=True)):
            if isinstance(want, int) and isinstance(have, int) and want != have:
                if override:
                    log.info("Overriding dim %d of input %s: %d -> %d", i, name, want, have)
                    continue
                why = f"--batch {batch}" if i == 0 and batch is not None else "the given shape"
                raise DynamicShapeError(
                    f"Input '{name}' has fixed size {want} in dim {i}, but {why} asks for "
                    f"{have}; export the model with that dimension dynamic")
            if isinstance(want, str) and want != "?" and isinstance(have, int):
                if named.setdefault(want, have) != have:
                    raise DynamicShapeError(
                        f"The given shapes disagree on dim '{want}': {named[want]} in one "
                        f"input, {have} in input '{name}'")
        targets[name] = target
    shapes = {}
    for name, target in targets.items():
        shape = [named.get(d, d) if isinstance(d, str) else d for d in target]
        free = [d for d in shape if isinstance(d, str)]
        if free:
            raise DynamicShapeError(
                f"Input '{name}' has dynamic dimensions {free}; give its shape, e.g. "
                f"--input-shape {_shape_hint(name, shape, inputs)}")
        shapes[name] = tuple(int(d) for d in shape)
    return shapes


def _shape_hint(name: str, dims: list[int | str] | None,
                inputs: Sequence[onnx.ValueInfoProto]) -> str:
    example = _example_shape(dims)
    return example if len(inputs) == 1 else f"{name}={example}"


def _set_shape(value_info: onnx.ValueInfoProto, shape: Sequence[int]) -> None:
    dims = value_info.type.tensor_type.shape
    del dims.dim[:]
    for size in shape:
        dims.dim.add().dim_value = int(size)


def activation_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (not initializers)."""
    init_names = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input
            if i.name not in init_names and i.doc_string != WEIGHT_MARK]


def has_dynamic_inputs(model: onnx.ModelProto) -> bool:
    """Whether any run-time input has a dim without a fixed size (or an unknown rank)."""
    inputs = [v for v in activation_inputs(model) if v.type.HasField("tensor_type")]
    return any(dims is None or any(isinstance(d, str) for d in dims)
               for dims in map(declared_dims, inputs))


def fix_input_shapes(model: onnx.ModelProto, input_shape: InputShapes) -> None:
    """Set the shapes of the run-time inputs in place (`resolve_input_shapes`, a given
    size replacing a fixed one), or fail if any stays dynamic.

    Args:
        input_shape: one shape for the first input, or a mapping input name -> shape.
    """
    inputs = activation_inputs(model)
    shapes = resolve_input_shapes(inputs, input_shape, override=True)
    for value_info in inputs:
        _set_shape(value_info, shapes[value_info.name])


def load_model(
    source: ModelSource,
    *,
    input_shape: InputShapes = None,
    example_input: Any = None,
) -> onnx.ModelProto:
    """Read any model source and return a weight-free ONNX model with inferred shapes.

    Args:
        source: ONNX file path, ONNX bytes, an `onnx.ModelProto`, or a `torch.nn.Module`
            (then `example_input` is required).
        input_shape: a shape for the first run-time input (e.g. ``(1, 3, 224, 224)``) or a
            mapping input name -> shape; required when the model's inputs are dynamic.
        example_input: the example input tensor(s) of a torch module.

    Returns:
        A model whose large initializers are shape-only graph inputs and whose
        `value_info` holds the inferred shape of every intermediate tensor.
    """
    model = read_model(source, example_input)
    stripped = _strip_large_initializers(model)
    fix_input_shapes(stripped, input_shape)
    inferred = _infer(stripped)
    # Shape arithmetic (Shape -> Gather -> Concat -> Expand, as in `cls.expand(B, -1, -1)`)
    # can defeat ONNX's data propagation; fold it to constants, as runtimes do at load.
    for _ in range(4):
        if not _has_unknown_shapes(inferred) or not _fold_constants(inferred):
            break
        inferred = _infer(inferred)
    # ONNX cannot infer through custom-domain ops. Assume such an op keeps the shape and
    # type of its first input (true of the usual custom activations and norms), then
    # infer again so that the nodes after it get shapes too.
    for _ in range(8):
        if not _assume_custom_op_shapes(inferred):
            break
        inferred = _infer(inferred)
    return inferred


FOLD_MAX_ELEMENTS = 4096  # constant tensors folded at most this large (shape arithmetic)


def _static_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    out = {}
    for v in (*graph.input, *graph.value_info, *graph.output):
        t = v.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[v.name] = tuple(d.dim_value for d in t.shape.dim)
    return out


def _has_unknown_shapes(model: onnx.ModelProto) -> bool:
    graph = model.graph
    known = set(_static_shapes(graph)) | {i.name for i in graph.initializer}
    return any(o and o not in known for n in graph.node for o in n.output)


def _fold_constants(model: onnx.ModelProto) -> bool:
    """Replace small constant subgraphs (Constant, Shape of static tensors, and ops on
    those) by initializers, in place. Returns whether anything was folded."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    shapes = _static_shapes(graph)
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer
              if np.prod(i.dims, dtype=np.int64) <= FOLD_MAX_ELEMENTS}
    outputs = {o.name for o in graph.output}
    opset = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    kept, folded = [], []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        result = None
        if node.domain in ("", "ai.onnx") and not set(node.output) & outputs:
            if node.op_type == "Shape" and inputs and inputs[0] in shapes:
                dims = np.array(shapes[inputs[0]], dtype=np.int64)
                attrs = {a.name: a.i for a in node.attribute}
                result = [dims[attrs.get("start", 0):attrs.get("end", len(dims))]]
            elif all(i in values for i in inputs) and node.op_type not in ("RandomNormal",
                                                                           "RandomUniform"):
                try:
                    single = onnx.helper.make_model(
                        onnx.helper.make_graph(
                            [node], "fold", [],
                            [onnx.helper.make_tensor_value_info(o, 0, None)
                             for o in node.output],
                            [numpy_helper.from_array(values[i], i) for i in set(inputs)]),
                        opset_imports=opset)
                    result = ReferenceEvaluator(single).run(None, {})
                except Exception:  # unsupported by the reference runtime: keep the node
                    result = None
        if result is not None and all(np.size(r) <= FOLD_MAX_ELEMENTS for r in result):
            for name, value in zip(node.output, result, strict=True):
                values[name] = np.asarray(value)
                folded.append(numpy_helper.from_array(np.asarray(value), name))
        else:
            kept.append(node)
    if not folded:
        return False
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(folded)
    # Drop partial shapes from the last inference: ONNX merges into them rather than
    # replacing them, so an unknown dim would survive the next pass.
    static = [v for v in graph.value_info if v.name in shapes and v.name not in values]
    del graph.value_info[:]
    graph.value_info.extend(static)
    return True


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError / ValidationError / RuntimeError
        raise InvalidModelError(f"ONNX shape inference failed: {exc}".splitlines()[0]) from None


def _assume_custom_op_shapes(model: onnx.ModelProto) -> bool:
    """Give custom-domain ops without inferred output types their first input's type."""
    graph = model.graph
    known = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)
             if v.type.tensor_type.HasField("shape")}
    for init in graph.initializer:
        known.setdefault(init.name, helper.make_tensor_value_info(
            init.name, init.data_type, list(init.dims)))
    added = False
    for node in graph.node:
        if node.domain in ("", "ai.onnx") or not node.input or node.input[0] not in known:
            continue
        source = known[node.input[0]]
        for out in node.output:
            if out and out not in known:
                value_info = graph.value_info.add()
                value_info.CopyFrom(source)
                value_info.name = out
                known[out] = value_info
                added = True
    return added

"""`latpred`: one console command with thin subcommands over the library.

Every handler calls library functions that the tests call too; any `PredictorError`
becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import os

# MKL's own thread pool fights torch's intra-op threads on the predictor's small matrices
# (~1.5x slower inference on 2 cores); one MKL thread unless the user says otherwise. Set
# before anything imports torch.
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from predictor import __version__
from predictor.cli_data import register_data_commands
from predictor.cli_fpga import register as register_fpga_commands
from predictor.cli_generate import register as register_generate_commands
from predictor.cli_measure import add_input_shapes_argument
from predictor.cli_measure import register as register_measure_commands
from predictor.cli_model import register as register_model_commands
from predictor.cli_search import register as register_search_commands
from predictor.cli_serve import register as register_serve_commands
from predictor.errors import PredictorError

log = logging.getLogger("predictor")

EXIT_USER_ERROR = 2


def _add_input_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", metavar="SHAPE",
                        help="the network's input shape, e.g. 1,3,224,224")


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return f"{n:g}"


def cmd_inspect(args: argparse.Namespace) -> int:
    from predictor.graph import extract_graph
    from predictor.onnx_io import expand_model_paths, parse_input_shapes

    shape = parse_input_shapes(args.input_shape)
    results = []
    for model in expand_model_paths(args.models):
        summary = extract_graph(model, input_shape=shape).summary()
        summary = {"model": str(model), **summary}
        results.append(summary)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return 0
    for s in results:
        print(f"{s['model']}")
        print(f"  inputs         {s['input_shapes']}")
        print(f"  MACs           {_human(s['macs'])}  (Conv, ConvTranspose, Gemm, MatMul, Einsum, LSTM, GRU, RNN)")
        print(f"  other FLOPs    {_human(s['other_flops'])}")
        print(f"  parameters     {_human(s['params'])}")
        print(f"  memory traffic {_human(s['memory_bytes'])}B "
              f"(weights {_human(s['weight_bytes'])}B, activations {_human(s['activation_bytes'])}B)")
        print(f"  nodes {s['nodes']}, edges {s['edges']}, depth {s['depth']}")
        print("  op histogram   " + ", ".join(f"{k} {v}" for k, v in s["op_counts"].items()))
        unknown = s["unknown_ops"]
        print("  unsupported    " + (", ".join(f"{k} {v}" for k, v in unknown.items())
                                     if unknown else "none"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from predictor import model_zoo
    from predictor.errors import PredictorError
    from predictor.generator import export_spec, known_specs
    from predictor.onnx_io import parse_shape
    from predictor.storage import atomic_write_bytes

    known = {s.name: s for s in known_specs()}
    if args.name in model_zoo.BUILDERS:  # at the given shape, else the network's usual one
        data = model_zoo.export(args.name, parse_shape(args.input_shape) if args.input_shape
                                else None)
    elif args.name in known:
        if args.input_shape:
            raise PredictorError(
                f"'{args.name}' is exported at its published input "
                f"{list(known[args.name].input_shape)}; --input-shape applies to "
                f"{', '.join(model_zoo.BUILDERS)}")
        data = export_spec(known[args.name]).SerializeToString()
    else:
        raise PredictorError(f"Unknown network '{args.name}'; known: "
                             f"{', '.join([*model_zoo.BUILDERS, *sorted(set(known) - set(model_zoo.BUILDERS))])}")
    atomic_write_bytes(Path(args.out), data)
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latpred", description="Meta-learned hardware latency predictor for ONNX models.")
    parser.add_argument("--version", action="version", version=f"latpred {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="operator graph summary of ONNX models")
    p.add_argument("models", nargs="+", metavar="MODEL.onnx",
                   help="ONNX files; a folder stands for its .onnx files")
    add_input_shapes_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per model")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("export", help="export a built-in network to ONNX")
    p.add_argument("name", help="resnet18, resnet50, mobilenet_v2, convnext_tiny, unet or "
                                "gpt2_small (any input shape; gpt2_small: 1,TOKENS), or a "
                                "well-known network at its published size: resnet34, "
                                "resnet101, mobilenet_v3_large, efficientnet_b0, vit_tiny16, "
                                "vit_small16, vit_base16, bert_mini, bert_small, bert_medium, "
                                "distilbert, bert_base, mixer_s16, mixer_b16")
    p.add_argument("out", metavar="OUT.onnx")
    _add_input_shape(p)
    p.set_defaults(handler=cmd_export)
    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Subcommands defined in other modules register here (keeps this file thin).
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    register_data_commands, register_model_commands, register_measure_commands,
    register_generate_commands, register_search_commands, register_serve_commands,
    register_fpga_commands]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except PredictorError as exc:
        print(f"latpred: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("latpred: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`latpred predict ... | head`): stop quietly, as Unix tools do;
        # stdout goes to devnull so that the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

"""`latpred generate`: write generated CNNs and transformers as ONNX files plus their specs.

    latpred generate --seed S --count N --out DIR [--kinds cnn,transformer]
                     [--families vit,bert] [--small]
    latpred generate --reference --out DIR

Writes ``DIR/<name>.onnx`` for every spec (files already there are kept) and then
``DIR/specs.json``, the list of `ModelSpec.to_dict()`; both atomically. A thin handler
over `predictor.generator`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from predictor.errors import InvalidArchError


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_generate(args: argparse.Namespace) -> int:
    from predictor import generator
    from predictor.storage import atomic_write_json

    if args.reference:
        specs = generator.reference_specs()
    elif args.seed is None or args.count is None:
        raise InvalidArchError("`latpred generate` needs --seed and --count (or --reference)")
    else:
        specs = generator.sample_specs(args.seed, args.count, args.kinds,
                                       families=_names(args.families), small=args.small)
    out = Path(args.out)
    generator.write_models(specs, out, progress=not args.no_progress)
    atomic_write_json(out / "specs.json", [s.to_dict() for s in specs])
    print(f"wrote {len(specs)} models and specs.json to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write generated CNNs / transformers as ONNX files")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--kinds", default="cnn,transformer",
                   help="comma-separated model kinds: cnn, transformer, rnn (default the "
                        "first two)")
    p.add_argument("--families", default=None,
                   help="comma-separated families, e.g. resnet,vit (default: all of --kinds but the "
                        "opt-in unet)")
    p.add_argument("--small", action="store_true", help="tiny models (for tests)")
    p.add_argument("--reference", action="store_true",
                   help="write the versioned reference calibration set instead of a sample")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_generate)

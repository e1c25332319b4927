"""Record in a checkpoint the op types of its training graphs (`info["op_types"]`).

    python scripts/record_training_op_types.py [--checkpoint checkpoints/latpred.ckpt]

`latpred train` records them itself; this adds them to a checkpoint trained before it
did, from the same cached graph corpora (weights unchanged, so device files still match).
`Predictor.unfamiliar_ops` and `latpred predict` then name the op types of a model that
no training graph held.
"""

from __future__ import annotations

import argparse

from predictor.checkpoint import DEFAULT_CHECKPOINT, Checkpoint
from predictor.datamodule import EpisodeDataModule
from predictor.errors import PredictorError
from predictor.training import training_op_types


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    checkpoint = Checkpoint.load(args.checkpoint)
    data = EpisodeDataModule(checkpoint.config.data, data_dir=args.data_dir,
                             cache_root=args.cache_dir, progress=True)
    data.setup("fit")
    tasks = [t for t in data.train_tasks if f"{t.space}/{t.device}" in checkpoint.devices]
    missing = set(checkpoint.devices) - {f"{t.space}/{t.device}" for t in tasks}
    if missing:
        raise PredictorError(f"Training devices not in the config's data: {sorted(missing)}")
    checkpoint.info["op_types"] = training_op_types(data.stores, tasks)
    checkpoint.save(args.checkpoint)
    print(f"{args.checkpoint}: {len(checkpoint.info['op_types'])} training op types: "
          f"{', '.join(checkpoint.info['op_types'])}")


if __name__ == "__main__":
    main()

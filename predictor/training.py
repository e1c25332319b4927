"""Meta-training entry point: data module + Lightning trainer -> a `Checkpoint`."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from predictor.checkpoint import Checkpoint
from predictor.config import TrainConfig
from predictor.datamodule import EpisodeDataModule
from predictor.datasets import DeviceTask
from predictor.errors import PredictorError
from predictor.features import op_types_in
from predictor.graph_store import GraphStore
from predictor.metalearner import MetaLearner

log = logging.getLogger(__name__)


def fit_standardisers(learner: MetaLearner, stores: list[GraphStore]) -> None:
    """Fit feature mean/std on the training graphs (node rows weighted by occurrence)."""
    rows = torch.cat([s.node_rows[s.node_ids[:: max(1, s.node_ids.numel() // 200_000)]]
                      for s in stores])
    learner.model.node_norm.fit(rows)
    learner.model.graph_norm.fit(torch.cat([s.graph_attr for s in stores]))


def training_op_types(stores: dict[tuple[str, int], GraphStore],
                      tasks: Sequence[DeviceTask]) -> list[str]:
    """Op types in the graphs of the training tasks: predictions for models with other op
    types extrapolate (`Predictor.unfamiliar_ops`)."""
    keys = dict.fromkeys(t.store_key for t in tasks)
    return sorted(set().union(*(op_types_in(stores[k].node_rows) for k in keys)))


def train(config: TrainConfig, out: str | Path, *, data_dir: str | Path | None = None,
          cache_root: str | Path | None = None, log_dir: str | Path = "runs",
          use_wandb: bool = False, progress: bool = True,
          extra_tasks: Sequence[DeviceTask] = (),
          extra_stores: dict[tuple[str, int], GraphStore] | None = None,
          only_extra_tasks: bool = False) -> Checkpoint:
    """Meta-train on the config's meta-train devices, select on meta-valid, save to `out`.

    `extra_tasks` join the meta-train devices (e.g. HW-NAS-Bench-360's energy tables,
    `predictor.hwnb360.device_tasks`), with their graphs in `extra_stores` by store key;
    with `only_extra_tasks` they replace them (the config's meta-valid devices still
    select the best epoch).
    """
    base = None
    if config.init_from:  # a bad base fails before the data is built
        base = Checkpoint.load(config.init_from)
        if base.config.model != config.model:
            raise PredictorError(f"init_from {config.init_from}: its model config differs "
                                 "from this config's 'model' section")
    L.seed_everything(config.seed, workers=True)
    datamodule = EpisodeDataModule(config.data, data_dir=data_dir, cache_root=cache_root,
                                   progress=progress)
    datamodule.setup("fit")
    datamodule.train_tasks = (list(extra_tasks) if only_extra_tasks
                              else datamodule.train_tasks + list(extra_tasks))
    datamodule.stores.update(extra_stores or {})
    learner = MetaLearner(config)
    base_devices: tuple[str, ...] = ()
    base_info: dict = {}
    if base is not None:
        learner.model.load_state_dict(base.model.state_dict())
        base_devices, base_info = base.devices, base.info
    else:
        fit_standardisers(learner, list(datamodule.stores.values()))

    loggers: list = [L.pytorch.loggers.CSVLogger(str(log_dir), name="train")]
    if use_wandb:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project="latpred", save_dir=str(log_dir), offline=True))
    best = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=str(Path(log_dir) / "lightning_ckpt"), monitor="val_spearman", mode="max",
        save_top_k=1, filename="best")
    trainer = L.Trainer(
        max_epochs=config.max_epochs,
        max_time={"minutes": config.max_minutes},
        accelerator=config.accelerator, devices=config.devices, strategy=config.strategy,
        num_nodes=config.num_nodes, gradient_clip_val=config.grad_clip,
        logger=loggers, callbacks=[best], enable_progress_bar=progress,
        reload_dataloaders_every_n_epochs=1, log_every_n_steps=10,
        enable_model_summary=False,
    )
    start = time.time()
    trainer.fit(learner, datamodule=datamodule)
    minutes = (time.time() - start) / 60
    if best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)
        learner.load_state_dict(state["state_dict"])
    # A warm-started predictor has also seen its base checkpoint's training devices.
    devices = tuple(dict.fromkeys(
        [*base_devices, *(f"{t.space}/{t.device}" for t in datamodule.train_tasks)]))
    checkpoint = Checkpoint(
        model=learner.model.cpu().eval(), config=config, devices=devices,
        info={"train_minutes": round(minutes, 2),
              "best_val_spearman": float(best.best_model_score or float("nan")),
              "valid_devices": [f"{t.space}/{t.device}" for t in datamodule.val_tasks],
              "epochs": trainer.current_epoch,
              "op_types": sorted(set(training_op_types(datamodule.stores,
                                                       datamodule.train_tasks))
                                 | set(base_info.get("op_types", []))),
              **({"init_from": str(config.init_from)} if config.init_from else {})},
    )
    if trainer.is_global_zero:
        checkpoint.save(out)
        log.info("Saved checkpoint to %s (%.1f min)", out, minutes)
    return checkpoint

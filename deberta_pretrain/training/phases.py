"""A run that continues another run as its next phase: ``model.init_from=<run directory>`` gives the weights (see
``initial_weights``), ``train.init_optimizer=true`` the AdamW moments of the same checkpoint as well.

The optimizer state is loaded through DeepSpeed like a resume (a checkpoint written at another ZeRO stage or
process count is converted once to DeepSpeed's universal form, cached in that checkpoint's folder), but the new run
keeps its own position: step 0, its own learning-rate schedule from its start, its own optimizer settings.
"""

from __future__ import annotations

import logging
import os

from ..deberta import ModelConfig
from . import optim
from ..layout import model_config_file, names_a_checkpoint
from .checkpoint import Checkpointer, CheckpointError, find_checkpoint, read_marker

logger = logging.getLogger("deberta_pretrain")
SHAPE_FREE = ("hidden_dropout_prob", "attention_probs_dropout_prob")  # may differ: no parameter depends on them


def optimizer_source(cfg, objective) -> tuple[str, str]:
    """(checkpoints folder, tag) whose optimizer state ``train.init_optimizer`` carries over; raises ``ValueError``
    when ``model.init_from`` is not a run (or checkpoint) of the same objective and model shapes."""
    init_from = cfg.model.init_from
    if not names_a_checkpoint(os.path.abspath(init_from)):
        raise ValueError(f"train.init_optimizer=true needs model.init_from=<run directory or checkpoint>, got "
                         f"{init_from} (a release or an export holds no optimizer state)")
    root, tag, run_dir = find_checkpoint(init_from)
    theirs = ((read_marker(os.path.join(root, tag)) or {}).get("config") or {}).get("objective")
    if theirs is not None and theirs != cfg.objective:
        raise ValueError(f"train.init_optimizer=true needs a run of the same objective: model.init_from={init_from} "
                         f"was trained with objective={theirs}, this run has objective={cfg.objective} (drop "
                         f"train.init_optimizer to start only from its weights)")
    for name, config in objective.model_configs().items():
        key, file = objective.config_key(name), os.path.join(run_dir, model_config_file(name))
        if not os.path.isfile(file):
            raise ValueError(f"train.init_optimizer=true: {init_from} has no {model_config_file(name)} (a run of "
                             f"another objective?); its optimizer state fits only a run of the same objective and shapes")
        theirs = ModelConfig.from_json_file(file).to_dict()
        for field, value in config.to_dict().items():
            if field not in SHAPE_FREE and theirs.get(field) != value:
                raise ValueError(f"train.init_optimizer=true needs the model of model.init_from={init_from}: "
                                 f"{key}.{field} is {value!r} here, {theirs.get(field)!r} there (drop "
                                 f"train.init_optimizer to start only from its weights)")
    return root, tag


def engine_with_moments(run, root: str, tag: str):
    """A fresh engine of ``run`` holding the weights and optimizer state of checkpoint ``root/tag``, at step 0 of
    its own schedule with its own optimizer settings."""
    cfg = run.cfg
    source = Checkpointer(root, keep_last=1, rank=run.rank, world_size=run.world, zero_stage=cfg.deepspeed.zero_stage)
    try:
        load_tag, universal = source.load_plan(tag)
        engine = run.build_engine(load_universal=universal)
        source.load(engine, load_tag, schedule=False)
    except CheckpointError as e:
        raise SystemExit(f"error: train.init_optimizer=true: the optimizer state of {os.path.join(root, tag)} "
                         f"cannot be loaded: {e}") from e
    if universal:
        optim.repair_after_universal_load(engine)
    engine.global_steps, engine.global_samples, engine.skipped_steps = 0, 0, 0
    optim.apply_settings(engine, run.engine_spec.optim, run.engine_spec.groups)
    if run.rank == 0:
        logger.info("starting from the weights and optimizer moments of %s (step %s); the learning-rate schedule "
                    "starts at step 0", os.path.join(root, tag), tag.split("_")[-1].lstrip("0") or "0")
    return engine

"""The DeepSpeed engine of a fine-tuning trial, from the shared builder (:mod:`deberta_pretrain.training.engine`):
its spec from the fine-tuning config's own sections, with the trial's rate and warm-up on a linear decay to 0
(upstream's GLUE schedule)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from ..data.sampler import accumulation_steps
from ..training import optim
from ..training.engine import EngineSpec, check_engine_options
from ..training.engine import build_engine as shared_build_engine
from .grid import grid_points


@dataclass(frozen=True)
class EngineOptions:
    """The engine settings of a fine-tuning config, the same for every trial: ``precision``,
    ``train.micro_batch_size`` (None: the batch split over the ranks), ``train.gradient_clipping``, and the ``optim``
    and ``deepspeed`` sections."""

    precision: str
    micro_batch_size: int | None
    gradient_clipping: float
    optim: Any
    deepspeed: Any


def engine_spec(options: EngineOptions, total_steps: int, batch_size: int, world: int, lr: float,
                warmup: int) -> EngineSpec:
    """The shared engine builder's spec of a trial of ``total_steps`` at ``batch_size``, ``lr`` and ``warmup``."""
    micro = options.micro_batch_size or max(1, batch_size // world)
    schedule = OmegaConf.create({**OmegaConf.to_container(options.optim), "lr": lr, "warmup_steps": warmup,
                                 "schedule": "linear", "end_lr_ratio": 0.0})
    return EngineSpec(options.precision, micro, batch_size, options.gradient_clipping, options.deepspeed, schedule,
                      total_steps, optim.group_settings(schedule), global_key="task.recipe.batch_size")


def check_engine(options: EngineOptions, task, world: int, on_gpu: bool) -> None:
    """The engine options (batch arithmetic, offload, precision, ``deepspeed.extra``) at every batch size of the
    task's grid, before anything is written; ``ValueError`` names the task and the key."""
    for point in grid_points(task.recipe):
        try:
            check_engine_options(engine_spec(options, 1, int(point["batch_size"]), world, point["lr"], 0), world,
                                 on_gpu)
        except ValueError as e:
            raise ValueError(f"task {task.name}: {e}") from None


def build_engine(options: EngineOptions, model, total_steps: int, batch_size: int, world: int, on_gpu: bool,
                 lr: float, warmup: int):
    """(engine, gradient accumulation, micro-batch) from the shared engine builder."""
    spec = engine_spec(options, total_steps, batch_size, world, lr, warmup)
    engine = shared_build_engine(model, spec, world, on_gpu)
    return engine, accumulation_steps(batch_size, spec.micro_batch_size, world), spec.micro_batch_size

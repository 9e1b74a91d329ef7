"""One fine-tuning trial: ``SequenceClassificationModel`` trained on one task with one seed at one point of its
grid, under DeepSpeed (one process or data parallel, any ZeRO stage, fp32/bf16/fp16), evaluated on the dev split(s)
and keeping the best evaluation (early selection on the dev set, as upstream reports)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..training.metrics import progress_bar
from ..training.run import step_seed
from . import metrics
from .batches import TaskData, batch_indices, collate
from .classifier import classifier
from .engine import EngineOptions, build_engine
from .evaluation import evaluate, report
from .grid import WARMUP_SHARE
from .trial import Trial


@dataclass(frozen=True)
class TrialOptions:
    """How every trial of a command trains, from the config's own sections: ``train`` (``max_steps``,
    ``eval_every``), the engine's options, the encoder's start (``from_scratch``; ``checkpoint`` as configured, for
    messages), whether the best evaluation's weights are kept (``export``) and ``logging.progress_bar``."""

    train: Any
    engine: EngineOptions
    from_scratch: bool
    checkpoint: str
    export: bool
    progress_bar: bool


class NonFiniteLoss(ValueError):
    """The training loss of a fine-tuning trial turned NaN or infinite; the message names task, seed and step."""


def finetune_once(options: TrialOptions, task, pretrained, data: TaskData, seed: int, rank: int, world: int, device,
                  log=None) -> Trial:
    """Train one seed (``task.recipe``: single values); the trial's best dev evaluation (and its step), the last one,
    and its sizes."""
    recipe = task.recipe
    torch.manual_seed(seed)
    model = classifier(pretrained, data.num_labels, recipe.cls_dropout, options.from_scratch, options.checkpoint)
    n = len(data.train["input_ids"])
    batch_size = int(recipe.batch_size)
    steps_per_epoch = math.ceil(n / batch_size)
    total = options.train.max_steps or int(math.ceil(recipe.epochs * steps_per_epoch))
    on_gpu = device.type == "cuda"
    warmup = recipe.warmup_steps if recipe.warmup_steps is not None else round(WARMUP_SHARE * total)
    engine, accumulation, micro = build_engine(options.engine, model, total, batch_size, world, on_gpu, recipe.lr,
                                               warmup)
    use_segments = pretrained.config.type_vocab_size > 0
    regression = data.problem == "regression"
    eval_every = options.train.eval_every or steps_per_epoch
    keep_best = options.export and rank == 0
    best, last, best_state, losses, tail = None, None, None, [], []  # tail: the last steps' losses (final loss)
    bar = progress_bar(total, f"{task.name} seed {seed}", rank == 0 and options.progress_bar)
    try:  # a non-finite loss raises: the engine is released all the same (a grid trains on)
        for step in range(total):
            torch.manual_seed(step_seed(seed, rank, step))  # dropout: per step and rank, as in pretraining
            batch = batch_indices(n, batch_size, steps_per_epoch, seed, step)
            losses.append(train_step(engine, data, batch, accumulation, micro, rank, use_segments, regression, device))
            tail = (tail + [losses[-1]])[-max(1, total // 10):]
            if bar is not None:
                bar.update(1)
            if (step + 1) % eval_every == 0 or step + 1 == total:
                train_loss = training_loss(losses, step + 1, world, f"task {task.name} seed {seed}")
                losses = []
                scores, predictions = evaluate(engine, data, micro, use_segments, rank, world, device)
                last = {"step": step + 1, **scores, "train_loss": train_loss}
                score = metrics.selection_score(last, metrics.metric_keys(data.metrics, data.dev), task.selection)
                if best is None or metrics.better(score, best["selection_score"]):
                    best = {**last, "selection_score": score, "predictions": predictions}
                    if keep_best:
                        best_state = {k: v.detach().float().cpu().clone()
                                      for k, v in engine.module.state_dict().items()}
                report({**last, "lr": recipe.lr}, task.name, seed, rank, log, bar)
    finally:
        if bar is not None:
            bar.close()
        engine.destroy()
    final_loss = training_loss(tail, total, world, f"task {task.name} seed {seed}")
    return Trial(seed, best, last, final_loss, total, n, data.num_labels, data.problem, state=best_state)


def train_step(engine, data, batch, accumulation: int, micro: int, rank: int, use_segments: bool, regression: bool,
               device) -> torch.Tensor:
    """One optimizer step over this rank's micro-batches of the global ``batch`` (indices); their mean loss."""
    loss_sum = torch.zeros((), device=device)
    for k in range(accumulation):
        first = (rank * accumulation + k) * micro
        out = engine(**collate(data.train, batch[first:first + micro].tolist(), use_segments, regression, device))
        engine.backward(out["loss"])
        engine.step()
        loss_sum += out["loss"].detach().float()
    return loss_sum / accumulation


def training_loss(losses: list, step: int, world: int, what: str) -> float:
    """The mean over steps and ranks of ``losses`` (one tensor per step up to ``step``); ``ValueError`` naming
    ``what`` and the first step whose loss is not finite (every rank raises it: the losses are summed first)."""
    values = torch.stack(losses).float()
    if world > 1:
        dist.all_reduce(values)
        values /= world
    bad = torch.nonzero(~torch.isfinite(values)).flatten().tolist()
    if bad:
        first = step - len(losses) + bad[0] + 1
        raise NonFiniteLoss(f"{what}: the training loss is {values[bad[0]].item()} at step {first}; this run "
                            f"stopped (a lower task.recipe.lr may help)")
    return float(values.mean())

"""A trial's dev evaluation: predictions gathered from every rank, the task's metrics on each dev split, and the
report of each evaluation to the metrics log, the text log and the progress bar."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from ..training.distributed import padded_batches
from . import metrics
from .batches import TaskData, collate

logger = logging.getLogger("deberta_pretrain.finetune")


def predict(engine, data: dict, micro: int, use_segments: bool, regression: bool, rank: int, world: int,
            device) -> list:
    """Predictions for every example of ``data``, in order, gathered from all ranks (the batches of
    ``padded_batches``, as pretraining's evaluation: every rank runs the same number of forward passes)."""
    out = []
    engine.eval()
    with torch.no_grad():
        for indices, real in padded_batches(len(data["input_ids"]), micro, rank, world):
            logits = engine(**collate(data, indices, use_segments, regression, device))["logits"].float()
            if real:
                out += zip(indices, (logits.view(-1) if regression else logits.argmax(-1)).tolist())
    engine.train()
    gathered = [None] * world
    dist.all_gather_object(gathered, out)
    return [prediction for _, prediction in sorted(pair for part in gathered for pair in part)]


def evaluate(engine, data: TaskData, micro, use_segments, rank, world, device) -> tuple[dict, dict]:
    """(the task's metrics on each dev split (MNLI: ``accuracy_validation_matched`` ...; one split: plain names),
    the predictions of each split)."""
    regression = data.problem == "regression"
    result, all_predictions = {}, {}
    for split, dev in data.dev.items():  # every dev label was checked when the data was loaded
        predictions = predict(engine, dev, micro, use_segments, regression, rank, world, device)
        all_predictions[split] = predictions
        scores = metrics.compute(data.metrics, predictions, dev["labels"])
        suffix = "" if len(data.dev) == 1 else f"_{split}"
        result.update({f"{name}{suffix}": value for name, value in scores.items()})
    return result, all_predictions


def report(evaluation: dict, task_name: str, seed: int, rank: int, log, bar) -> None:
    """A dev evaluation to the metrics log (``log``: a ``MetricsLogger``), the text log (rank 0) and the progress
    bar; undefined scores are said."""
    undefined = [k for k, v in evaluation.items() if v is None]
    if undefined and rank == 0:
        logger.warning("%s seed %d step %d: %s undefined on these predictions (all equal?), recorded as null",
                       task_name, seed, evaluation["step"], ", ".join(undefined))
    if log is not None:  # metrics.jsonl and wandb, as pretraining's validation records
        log.log({"split": f"validation/{task_name}", "task": task_name, "seed": seed, **evaluation})
    if rank == 0:
        logger.info("%s seed %d step %d: %s", task_name, seed, evaluation["step"],
                    ", ".join(f"{k} {_number(v, k)}" for k, v in evaluation.items() if k != "step"))
    if bar is not None:
        bar.set_postfix(**{k: _number(v, k) for k, v in evaluation.items() if k != "step"})


def _number(value, key: str = "") -> str:
    """Scores to 4 decimals; the learning rate exactly as configured (5e-05 must not read 0.0001)."""
    if value is None:
        return "null"
    return f"{value:g}" if key == "lr" else f"{value:.4f}"

"""Fine-tune ``SequenceClassificationModel`` on one task with one seed, under DeepSpeed (one process or data
parallel, any ZeRO stage, fp32/bf16/fp16), evaluating on the dev split(s) and keeping the best evaluation (early
selection on the dev set, as upstream reports)."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from ..data.sampler import accumulation_steps
from ..deberta import ModelConfig, SequenceClassificationModel
from ..training import optim
from ..training.distributed import padded_batches
from ..training.metrics import progress_bar
from ..training.engine import EngineSpec, check_engine_options
from ..training.engine import build_engine as shared_build_engine
from ..training.run import step_seed
from . import metrics
from .data import encode, load_task
from .grid import grid_points

logger = logging.getLogger("deberta_pretrain.finetune")
WARMUP_SHARE = 0.06  # task.recipe.warmup_steps=null: this share of the run's steps (as RoBERTa's GLUE recipes)


POOLING = {"dropout": 0.0, "hidden_act": "gelu"}  # upstream's GLUE pooler: no dropout inside it, GELU


def classifier_config(config: ModelConfig) -> ModelConfig:
    """The encoder's config with upstream's GLUE pooling (:data:`POOLING`)."""
    fields = config.to_dict()
    fields["pooling"] = dict(POOLING)
    return ModelConfig.from_dict(fields)


def subsample(n: int, limit, seed: int) -> list[int]:
    """The indices of a deterministic subset of ``limit`` of ``n`` records (all where ``limit`` is unset)."""
    if not limit or n <= limit:
        return list(range(n))
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit]).tolist()


def encode_split(split, task, tokenizer, limit) -> dict:
    keep = subsample(len(split.records), limit, 0)
    return encode([split.records[i] for i in keep], task, tokenizer, task.recipe.max_length,
                  [split.targets[i] for i in keep])


class TaskData:
    """The encoded train and dev splits of a task, its label space and dev metrics; every split is read and checked
    first (:func:`~.data.load_task`)."""

    def __init__(self, cfg, task, tokenizer):
        loaded = load_task(task)
        self.problem, self.labels, self.metrics = loaded.problem, loaded.labels, loaded.metrics
        self.num_labels = len(self.labels) or 1
        self.train = encode_split(loaded.train, task, tokenizer, cfg.train.max_train_samples)
        self.dev = {name: encode_split(split, task, tokenizer, cfg.train.max_eval_samples)
                    for name, split in loaded.dev.items()}


def collate(data: dict, indices, use_segments: bool, regression: bool, device) -> dict:
    length = max(len(data["input_ids"][i]) for i in indices)
    ids = torch.zeros(len(indices), length, dtype=torch.long)
    segments = torch.zeros_like(ids)
    for row, i in enumerate(indices):
        n = len(data["input_ids"][i])
        ids[row, :n] = torch.tensor(data["input_ids"][i])
        segments[row, :n] = torch.tensor(data["segments"][i])
    labels = torch.tensor([data["labels"][i] for i in indices], dtype=torch.float32 if regression else torch.long)
    batch = {"input_ids": ids, "input_mask": (ids > 0).long() | (torch.arange(length) == 0).long(),
             "labels": labels}
    if use_segments:
        batch["type_ids"] = segments
    return {k: v.to(device) for k, v in batch.items()}


def engine_spec(cfg, total_steps: int, batch_size: int, world: int, lr: float, warmup: int) -> EngineSpec:
    """The shared engine builder's spec from the fine-tuning config's own sections, with the recipe's rate and
    warm-up on a linear decay to 0 (upstream's GLUE schedule)."""
    micro = cfg.train.micro_batch_size or max(1, batch_size // world)
    schedule = OmegaConf.create({**OmegaConf.to_container(cfg.optim), "lr": lr, "warmup_steps": warmup,
                                 "schedule": "linear", "end_lr_ratio": 0.0})
    return EngineSpec(cfg.precision, micro, batch_size, cfg.train.gradient_clipping, cfg.deepspeed, schedule,
                      total_steps, optim.group_settings(schedule), global_key="task.recipe.batch_size")


def check_engine(cfg, task, world: int, on_gpu: bool) -> None:
    """The engine options (batch arithmetic, offload, precision, ``deepspeed.extra``) at every batch size of the
    task's grid, before anything is written; ``ValueError`` names the task and the key."""
    for point in grid_points(task.recipe):
        try:
            check_engine_options(engine_spec(cfg, 1, int(point["batch_size"]), world, point["lr"], 0), world, on_gpu)
        except ValueError as e:
            raise ValueError(f"task {task.name}: {e}") from None


def build_engine(cfg, model, total_steps: int, batch_size: int, world: int, on_gpu: bool, lr: float, warmup: int):
    """(engine, gradient accumulation, micro-batch) from the shared engine builder."""
    spec = engine_spec(cfg, total_steps, batch_size, world, lr, warmup)
    engine = shared_build_engine(model, spec, world, on_gpu)
    return engine, accumulation_steps(batch_size, spec.micro_batch_size, world), spec.micro_batch_size


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


def evaluate(engine, task, data: TaskData, micro, use_segments, rank, world, device) -> tuple[dict, dict]:
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


def finetune_once(cfg, task, pretrained, data: TaskData, seed: int, rank: int, world: int, device,
                  log=None) -> dict:
    """Train one seed; returns the best dev evaluation (and its step), the last one, and the run's sizes."""
    recipe = task.recipe
    torch.manual_seed(seed)
    model = classifier(cfg, pretrained, data.num_labels, recipe.cls_dropout)
    n = len(data.train["input_ids"])
    batch_size = int(recipe.batch_size)
    steps_per_epoch = math.ceil(n / batch_size)
    total = cfg.train.max_steps or int(math.ceil(recipe.epochs * steps_per_epoch))
    on_gpu = device.type == "cuda"
    warmup = recipe.warmup_steps if recipe.warmup_steps is not None else round(WARMUP_SHARE * total)
    engine, accumulation, micro = build_engine(cfg, model, total, batch_size, world, on_gpu, recipe.lr, warmup)
    use_segments = pretrained.config.type_vocab_size > 0
    regression = data.problem == "regression"
    eval_every = cfg.train.eval_every or steps_per_epoch
    best, last, losses, tail = None, None, [], []  # tail: the last steps' losses, for the final training loss
    bar = progress_bar(total, f"{task.name} seed {seed}", rank == 0 and cfg.logging.progress_bar)
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
                scores, predictions = evaluate(engine, task, data, micro, use_segments, rank, world, device)
                last = {"step": step + 1, **scores, "train_loss": train_loss}
                score = metrics.selection_score(last, metrics.metric_keys(data.metrics, data.dev), task.selection)
                if best is None or metrics.better(score, best["selection_score"]):
                    best = {**last, "selection_score": score, "predictions": predictions}
                    if cfg.export and rank == 0:
                        best_state = {k: v.detach().float().cpu().clone()
                                      for k, v in engine.module.state_dict().items()}
                report({**last, "lr": recipe.lr}, task.name, seed, rank, log, bar)
    finally:
        if bar is not None:
            bar.close()
        engine.destroy()
    final_loss = training_loss(tail, total, world, f"task {task.name} seed {seed}")
    out = {"seed": seed, "best": best, "last": last, "final_train_loss": final_loss, "steps": total,
           "train_examples": n, "num_labels": data.num_labels, "problem": data.problem}
    if cfg.export and rank == 0:
        out["state"] = best_state
    return out


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


class NonFiniteLoss(ValueError):
    """The training loss of a fine-tuning run turned NaN or infinite; the message names task, seed and step."""


def classifier(cfg, pretrained, num_labels: int, dropout: float) -> SequenceClassificationModel:
    """The classifier on the pretrained encoder (``from_scratch``: freshly initialised); ``ValueError`` when the
    checkpoint lacks encoder weights."""
    model = SequenceClassificationModel(classifier_config(pretrained.config), num_labels=num_labels, drop_out=dropout)
    if not cfg.from_scratch:
        encoder = {k: v for k, v in pretrained.state.items() if k.startswith("deberta.")}
        result = model.load_state_dict(encoder, strict=False)
        fresh = sorted(k for k in result.missing_keys if not k.startswith(("pooler.", "classifier.")))
        if fresh:
            raise ValueError(f"checkpoint {cfg.checkpoint} lacks encoder weights: {fresh[:5]}...")
    return model


def batch_indices(n: int, batch_size: int, steps_per_epoch: int, seed: int, step: int) -> np.ndarray:
    """The examples of ``step``: the epoch's permutation (by seed and epoch), its last, short batch filled from its
    start."""
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batch = order[position * batch_size:(position + 1) * batch_size]
    return np.concatenate([batch, order[:batch_size - len(batch)]]) if len(batch) < batch_size else batch


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


def _number(value, key: str = "") -> str:
    """Scores to 4 decimals; the learning rate exactly as configured (5e-05 must not read 0.0001)."""
    if value is None:
        return "null"
    return f"{value:g}" if key == "lr" else f"{value:.4f}"

"""The pretraining loop: resume, train, evaluate, checkpoint. What is trained and how a batch is made belong to the
objective (``deberta_pretrain.objectives``); what was checked and built before the first step to ``run.Run``."""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.distributed as dist

from ..data.sampler import StepSampler
from . import metrics, optim
from .checkpoint import CheckpointError, Checkpointer
from .run import Run, StopRequest, fingerprint_hash, step_seed

logger = logging.getLogger("deberta_pretrain")


class MicroBatches(torch.utils.data.Dataset):
    """Item ``k`` is the ``k``-th micro-batch of this rank (step ``k // accumulation``), prepared by the objective's
    collator; a DataLoader over it prefetches in worker processes while the order stays fixed."""

    def __init__(self, dataset, sampler: StepSampler, collator):
        self.dataset, self.sampler, self.collator = dataset, sampler, collator

    def __len__(self):
        return 2**62

    def __getitem__(self, k):
        step, micro = divmod(k, self.sampler.accumulation)
        items = [(index, epoch, self.dataset[index]) for epoch, index in self.sampler.micro_batch(step, micro)]
        return self.collator(items)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate(run: Run, collator) -> dict:
    """The objective's validation metrics on fixed masks over ``train.eval_samples`` blocks; every rank runs the
    same number of forward passes (ZeRO-3 gathers parameters collectively)."""
    engine, cfg, objective = run.engine, run.cfg, run.objective
    n = min(len(run.valid_set), cfg.train.eval_samples)
    if n == 0:
        return {}
    batch_size = cfg.train.micro_batch_size
    totals = torch.zeros(len(objective.stat_names), dtype=torch.float64, device=run.device)
    engine.eval()
    with torch.no_grad():
        for j in range(math.ceil(n / (batch_size * run.world))):
            start = (j * run.world + run.rank) * batch_size
            indices = list(range(start, min(start + batch_size, n)))
            items = [(i, 0, run.valid_set[i]) for i in indices] or [(0, 0, run.valid_set[0])]  # a rank with none
            _, stats = objective.forward(engine, to_device(collator(items), run.device))
            totals += stats if indices else 0.0 * stats
    engine.train()
    dist.all_reduce(totals)
    return objective.summarize(dict(zip(objective.stat_names, totals.tolist())), "validation")


def resume_or_start(run: Run, checkpointer: Checkpointer):
    """(engine, step, client_state): the engine at the newest checkpoint that loads, whatever world size or ZeRO
    layout wrote it, or a fresh engine at step 0 when the run has no checkpoint. A run never starts over in a
    directory that holds checkpoints: when none loads, every one is listed with the reason and nothing is changed.
    Each attempt gets a fresh engine, so a failed load never leaves a half-loaded one behind."""
    usable, refused = checkpointer.survey()
    for tag in usable:
        try:
            load_tag, universal = checkpointer.load_plan(tag)
            engine = run.build_engine(load_universal=universal)
            step, client_state = checkpointer.load(engine, load_tag)
            if universal:
                optim.repair_after_universal_load(engine, run.cfg)
        except CheckpointError as e:
            refused.append((tag, str(e)))
            if run.engine is not None:
                run.engine.destroy()
                run.engine = None
            continue
        for bad, why in refused:
            if run.rank == 0:
                logger.warning("checkpoint %s is not usable: %s", checkpointer.path(bad), why)
        return engine, step, client_state
    interrupted = all(why.startswith("incomplete") for _, why in refused)
    if refused and not interrupted:
        listing = "\n".join(f"  {checkpointer.path(tag)}: {why}" for tag, why in sorted(refused))
        raise SystemExit(f"error: {run.run_dir} holds checkpoints but none can be resumed:\n{listing}\n"
                         f"Nothing was changed. Repair or remove them, or start a new run (another name=).")
    if refused and run.rank == 0:  # only saves that never finished: there is nothing to resume
        logger.warning("ignoring interrupted saves that never completed: %s",
                       ", ".join(checkpointer.path(tag) for tag, _ in refused))
    return run.build_engine(), 0, {}


def check_resumable(run: Run, client_state: dict) -> None:
    """Refuse to continue a run whose model, data, masking, objective, seed, global batch or precision changed.
    Keys a checkpoint predates are not compared (their values then were the defaults)."""
    saved = client_state.get("config_fingerprint")
    if saved is not None:
        changed = sorted(k for k in saved if k in run.fingerprint and saved[k] != run.fingerprint[k])
        if changed:
            raise SystemExit(f"error: {run.run_dir} was trained with different values of {', '.join(changed)}; "
                             f"start a new run (another name=) or restore those settings")


def vote(stop: StopRequest, nonfinite: torch.Tensor, device) -> tuple[bool, bool]:
    """(stop requested on any rank, non-finite loss on any rank): the step's one read-back to the host."""
    votes = torch.stack([torch.tensor(stop.requested, device=device), nonfinite]).float()
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    stop_requested, diverged = (bool(v) for v in votes.tolist())
    return stop_requested, diverged


def pretrain(cfg) -> dict:
    """Run (or resume) the pretraining described by ``cfg``; returns the last logged training metrics."""
    run = Run(cfg)
    checkpointer = Checkpointer(os.path.join(run.run_dir, "checkpoints"), cfg.train.keep_last, run.rank, run.world,
                                cfg.deepspeed.zero_stage)
    engine, start_step, client_state = resume_or_start(run, checkpointer)
    check_resumable(run, client_state)
    run.prepare_run_dir()  # only now, so that a refused resume leaves every file as it was
    if start_step and run.rank == 0:
        logger.info("resuming %s from step %d", run.run_dir, start_step)
    objective = run.objective
    log = metrics.MetricsLogger(run.run_dir, cfg, client_state.get("wandb_id"), enabled=run.rank == 0,
                                start_step=start_step)
    sampler = StepSampler(len(run.train_set), cfg.seed, cfg.train.global_batch_size, cfg.train.micro_batch_size,
                          run.world, run.rank)
    batches = iter(torch.utils.data.DataLoader(
        MicroBatches(run.train_set, sampler, objective.collator(cfg.seed)), batch_size=None,
        sampler=range(start_step * sampler.accumulation, cfg.train.max_steps * sampler.accumulation),
        num_workers=cfg.data.num_workers, pin_memory=run.on_gpu))
    eval_collator = objective.collator(cfg.seed + 1)
    progress = metrics.TrainProgress(run, objective, engine, log, start_step, sampler)
    stop = StopRequest(run.run_dir, run.rank)
    watch_loss = cfg.precision != "fp16"  # fp16: DeepSpeed's loss scaling owns overflows

    if start_step == 0:  # the untrained baseline, so curves and comparisons start from where training started
        progress.log_validation(0, evaluate(run, eval_collator))
    step = start_step
    while step < cfg.train.max_steps:
        torch.manual_seed(step_seed(cfg.seed, run.rank, step))
        nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
        for _ in range(sampler.accumulation):
            loss, stats = objective.train_step(engine, to_device(next(batches), run.device))
            progress.add(stats)
            nonfinite |= ~torch.isfinite(loss)
        step += 1
        stop_requested, diverged = vote(stop, nonfinite & watch_loss, run.device)
        if diverged and cfg.train.on_nonfinite == "stop":
            raise SystemExit(f"error: the training loss is not finite at step {step} (train.on_nonfinite=stop); "
                             f"{checkpointer.describe_latest()}. Resume from it with a lower optim.lr or "
                             f"train.on_nonfinite=skip")
        if diverged and run.rank == 0:
            logger.warning("non-finite training loss at step %d: its update is dropped (train.on_nonfinite=skip)",
                           step)
        done = step == cfg.train.max_steps
        progress.step_done(step, log_now=step % cfg.train.log_every == 0 or done)
        if step % cfg.train.eval_every == 0 or done:
            progress.log_validation(step, evaluate(run, eval_collator))
        if step % cfg.train.checkpoint_every == 0 or done or stop_requested:
            client_state = {"step": step, "samples": step * cfg.train.global_batch_size, "wandb_id": log.run_id,
                            "config_fingerprint": run.fingerprint, "world_size": run.world,
                            "config_hash": fingerprint_hash(run.fingerprint)}
            try:
                checkpointer.save(engine, step, client_state)
            except CheckpointError as e:
                raise SystemExit(f"error: {e}") from e
        if stop_requested:
            if run.rank == 0:
                logger.warning("stopped at step %d after a stop request; restart with the same name to resume", step)
            break
    progress.close()
    log.close()
    return progress.last

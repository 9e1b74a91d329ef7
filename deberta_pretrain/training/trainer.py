"""The pretraining loop: resume, train, evaluate, checkpoint. What is trained and how a batch is made belong to the
objective (``deberta_pretrain.objectives``); what was checked and built before the first step to ``run.Run``."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from .. import remote
from ..cli import EXIT_INTERRUPTED
from ..data.corpus import Corpus, Source
from ..data.sampler import StepSampler
from ..data.shards import DataError
from ..layout import checkpoint_tag, recorded_config
from . import metrics, optim
from .checkpoint import CheckpointError, Checkpointer
from .distributed import padded_batches
from .fork import source_checkpointer
from .phases import engine_with_moments
from .resume_settings import check_changes, record_changes
from .mirror import RunMirror
from .run import Run, StopRequest, ignore_interrupts, step_seed
from .run_log import RunLog

logger = logging.getLogger("deberta_pretrain")


class MicroBatches(torch.utils.data.Dataset):
    """Item ``k`` is the ``k``-th micro-batch of this rank (step ``k // accumulation``), prepared by the objective's
    collator; a DataLoader over it prefetches in worker processes while the order stays fixed."""

    def __init__(self, corpus: Corpus, sampler: StepSampler, collator):
        self.corpus, self.sampler, self.collator = corpus, sampler, collator

    def __len__(self):
        return 2**62

    def __getitem__(self, k):
        step, micro = divmod(k, self.sampler.accumulation)
        return self.collator([self.corpus.train_item(*sample) for sample in self.sampler.micro_batch(step, micro)])


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def validation_totals(run: Run, collator, source: Source) -> torch.Tensor | None:
    """The objective's statistics summed over the first ``train.eval_samples`` validation blocks of ``source``
    (fixed masks), all-reduced; None when it has none. Under ``impl.compile`` a short last batch is filled up
    with blocks of padding, which hold no token and no prediction. Every rank runs the same number of forward passes
    (ZeRO-3 gathers parameters collectively)."""
    engine, objective = run.engine, run.objective
    n = run.corpus.validation_blocks(source, run.cfg.train.eval_samples)
    if n == 0:
        return None
    batch_size = run.cfg.train.micro_batch_size
    totals = torch.zeros(len(objective.stat_names), dtype=torch.float64, device=run.device)
    for indices, real in padded_batches(n, batch_size, run.rank, run.world):
        items = [run.corpus.validation_item(source, i) for i in indices]
        if run.cfg.impl.compile:  # one shape for the compiled model: a short last batch would compile again
            items += [(key, np.full_like(block, run.tokenizer.pad_token_id)) for key, block in items[:1]] * (
                batch_size - len(items))
        _, stats = objective.forward(engine, to_device(collator(items), run.device))
        totals += stats if real else 0.0 * stats
    dist.all_reduce(totals)
    return totals


def evaluate(run: Run, collator) -> dict[str, dict]:
    """{split: metrics}: ``validation``, and for a mixture ``validation/<source>`` per source besides, the mixture's
    record weighed as the corpus says (``Corpus.validation_weights``)."""
    objective, corpus = run.objective, run.corpus
    run.engine.eval()
    with torch.no_grad():
        totals = {source.name: validation_totals(run, collator, source) for source in corpus.sources}
    run.engine.train()
    evaluated = [source for source in corpus.sources if totals[source.name] is not None]
    if not evaluated:
        return {}
    if not corpus.mixture:
        return {"validation": objective.summarize(dict(zip(objective.stat_names, totals[None].tolist())), "validation")}
    records = {f"validation/{s.name}": objective.summarize(dict(zip(objective.stat_names, totals[s.name].tolist())),
                                                          "validation") for s in evaluated}
    weights = corpus.validation_weights(evaluated, run.cfg.train.eval_samples)
    if weights:
        mixed = sum(totals[name] * factor for name, factor in weights.items())
        records["validation"] = objective.summarize(dict(zip(objective.stat_names, mixed.tolist())), "validation")
    return records


def resume_or_start(run: Run, checkpointer: Checkpointer):
    """(engine, step, client_state, settings changed since the checkpoint): the engine at the newest checkpoint that
    loads, whatever world size or ZeRO layout wrote it, or a fresh engine at step 0 when the run has no checkpoint.
    A run never starts over in a directory that holds checkpoints: when none loads, every one is listed with the
    reason and nothing is changed. Each attempt gets a fresh engine, so a failed load never leaves a half-loaded one
    behind."""
    usable, refused = checkpointer.survey()
    if not usable and run.fork is not None:
        return fork_start(run, checkpointer)
    if usable:  # before any engine is built: a changed model would otherwise fail to load, as if damaged
        settings_since(run, checkpointer, usable[0])
    for tag in usable:
        try:
            load_tag, universal = checkpointer.load_plan(tag)
            engine = run.build_engine(load_universal=universal)
            step, client_state = checkpointer.load(engine, load_tag)
            if universal:
                optim.repair_after_universal_load(engine)
        except CheckpointError as e:
            refused.append((tag, str(e)))
            if run.engine is not None:
                run.engine.destroy()
                run.engine = None
            continue
        for bad, why in refused:
            if run.rank == 0:
                logger.warning("checkpoint %s is not usable: %s", checkpointer.path(bad), why)
        return engine, step, client_state, settings_since(run, checkpointer, tag)
    interrupted = all(why.startswith("incomplete") for _, why in refused)
    if refused and not interrupted:
        listing = "\n".join(f"  {checkpointer.path(tag)}: {why}" for tag, why in sorted(refused))
        raise SystemExit(f"error: {run.run_dir} holds checkpoints but none can be resumed:\n{listing}\n"
                         f"Nothing was changed. Repair or remove them, or start a new run (another name=).")
    if refused and run.rank == 0:  # only saves that never finished: there is nothing to resume
        logger.warning("ignoring interrupted saves that never completed: %s",
                       ", ".join(checkpointer.path(tag) for tag, _ in refused))
    if run.optimizer_source:  # a phase that carries the previous run's AdamW moments over
        return engine_with_moments(run, *run.optimizer_source), 0, {}, {}
    return run.build_engine(), 0, {}, {}


def settings_since(run: Run, checkpointer: Checkpointer, tag: str, fork: bool = False) -> dict:
    """The settings that changed since checkpoint ``tag`` was trained and are applied from the resumed step (see
    ``resume_settings``); a change of a key that cannot change stops the run (``SystemExit``). A checkpoint from
    before the config was recorded in its ``complete.json`` is compared with its run's ``.hydra/config.yaml``.
    ``fork``: the checkpoint is another run's, which this one forks."""
    source_run = os.path.dirname(checkpointer.directory)
    saved = (checkpointer.marker(tag) or {}).get("config")
    recorded = recorded_config(source_run)
    if saved is None and os.path.isfile(recorded):
        saved = OmegaConf.to_container(OmegaConf.load(recorded), resolve=True)
    if saved is None:
        return {}
    return check_changes(saved, OmegaConf.to_container(run.cfg, resolve=True), source_run, fork)


def fork_start(run: Run, checkpointer: Checkpointer):
    """Like resuming, from the checkpoint of another run that ``train.fork_from`` names (see ``fork``): (engine,
    step, client state without the source's logger id, settings changed since the source)."""
    source = run.fork
    reader = source_checkpointer(source, run.rank, run.world, run.cfg.deepspeed.zero_stage, checkpointer.directory)
    changes = settings_since(run, reader, source.tag, fork=True)
    try:
        load_tag, universal = reader.load_plan(source.tag)
        engine = run.build_engine(load_universal=universal)
        step, state = reader.load(engine, load_tag)
    except CheckpointError as e:
        raise SystemExit(f"error: train.fork_from: {source.label} cannot be loaded: {e}") from e
    if universal:
        optim.repair_after_universal_load(engine)
    state.pop("wandb_id", None)  # the fork logs as a run of its own
    return engine, step, state, changes


def client_state(run: Run, step: int, wandb_id) -> dict:
    """What a checkpoint carries besides the engine's state: position, logger id, and the config it was trained
    with (recorded in its ``complete.json`` too, and compared on resume)."""
    return {"step": step, "samples": step * run.cfg.train.global_batch_size, "wandb_id": wandb_id,
            "world_size": run.world, "config": OmegaConf.to_container(run.cfg, resolve=True)}


def vote(stop: StopRequest, nonfinite: torch.Tensor, device) -> tuple[bool, bool]:
    """(stop requested on any rank, non-finite loss on any rank): the step's one read-back to the host."""
    votes = torch.stack([torch.tensor(stop.requested, device=device), nonfinite]).float()
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    stop_requested, diverged = (bool(v) for v in votes.tolist())
    return stop_requested, diverged


def start_or_resume(run: Run, checkpointer: Checkpointer):
    """(engine, first step, client state of the checkpoint): resumed with the command's settings applied and their
    changes recorded, or started fresh; the run directory is written only now, so that a refused resume leaves every
    file as it was."""
    engine, start_step, saved_state, changes = resume_or_start(run, checkpointer)
    if start_step >= run.cfg.train.max_steps and run.fork is not None:
        raise SystemExit(f"error: train.fork_from: {run.fork.label} is at step {start_step} and train.max_steps="
                         f"{run.cfg.train.max_steps}: the fork has nothing to train; raise train.max_steps")
    if start_step >= run.cfg.train.max_steps:
        raise RunFinished(start_step)
    if start_step:
        optim.apply_settings(engine, run.engine_spec.optim, run.engine_spec.groups)
    run.prepare_run_dir()
    if start_step and run.rank == 0 and run.fork is not None:
        logger.info("forked %s from %s at step %d: its weights, optimizer moments, schedule step, data position and "
                    "random state (the source is only read)", run.run_dir, run.fork.label, start_step)
        record_changes(changes, run.run_dir, start_step, fork=True)
    elif start_step and run.rank == 0:
        logger.info("resuming %s from step %d (checkpoint %s)", run.run_dir, start_step,
                    checkpointer.path(checkpoint_tag(start_step)))
        record_changes(changes, run.run_dir, start_step)
    elif run.rank == 0:
        logger.info("starting at step 0 of %d: %s", run.cfg.train.max_steps, describe_start(run, engine))
    return engine, start_step, saved_state


class RunFinished(Exception):
    """The run's checkpoint is at ``train.max_steps`` already: there is nothing to train."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def describe_start(run: Run, engine) -> str:
    """What is trained, how, and on how many processes, in one line for train.log."""
    cfg, sampler = run.cfg, run.sampler
    parameters = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    return (f"objective {cfg.objective}, {parameters:,} parameters, {cfg.precision}, ZeRO stage "
            f"{cfg.deepspeed.zero_stage}{' with offload' if cfg.deepspeed.offload else ''}, {run.world} process"
            f"{'es' if run.world > 1 else ''}; {cfg.train.global_batch_size} blocks a step (micro batch "
            f"{cfg.train.micro_batch_size} x accumulation {sampler.accumulation} x {run.world}), optim.lr "
            f"{cfg.optim.lr:g} with {cfg.optim.schedule} schedule")


def next_steps(run_dir: str, name: str) -> str:
    """The commands that usually come after pretraining, for the end of the log."""
    return (f"export: python launch/export.py checkpoint={run_dir} output=release/{name}; plots: python "
            f"launch/plot.py run={run_dir}; fine-tuning: python launch/finetune.py checkpoint={run_dir} "
            f"task=<task> (or suite=glue)")


def micro_batch_stream(run: Run, sampler: StepSampler, start_step: int):
    """This rank's micro-batches from ``start_step`` on, prepared ahead in ``data.num_workers`` processes."""
    cfg = run.cfg
    return iter(torch.utils.data.DataLoader(
        MicroBatches(run.corpus, sampler, run.objective.collator(cfg.seed)), batch_size=None,
        sampler=range(start_step * sampler.accumulation, cfg.train.max_steps * sampler.accumulation),
        num_workers=cfg.data.num_workers, pin_memory=run.on_gpu, worker_init_fn=ignore_interrupts))


EXIT_STOPPED = EXIT_INTERRUPTED  # a stop request (Ctrl-C, SIGTERM, SIGUSR1, STOP file) ended the run; checkpoint saved
EXIT_NOT_MIRRORED = 3  # training finished, but checkpoints did not reach train.remote_dir (the next start uploads)


def pretrain(cfg) -> dict:
    """Run (or resume) the pretraining described by ``cfg``; returns the last logged training metrics. Ends with
    ``SystemExit`` of :data:`EXIT_STOPPED` or :data:`EXIT_NOT_MIRRORED` when the run did not finish completely (a job
    script can tell; see docs/resume-and-faults.md)."""
    with RunLog(enabled=os.environ.get("RANK", "0") == "0") as run_log:
        run = Run(cfg, run_log)
        finished_before = None  # the step of a run that was finished when this command started
        with RunMirror(run.run_dir, cfg.train.remote_dir, cfg.name, cfg.train.keep_last, run.rank == 0) as mirror:
            checkpointer = Checkpointer.for_run(run.run_dir, cfg.train, run.rank, run.world,
                                                cfg.deepspeed.zero_stage, mirror)
            try:
                last, stopped = train(run, checkpointer)
            except RunFinished as finished:
                last, stopped, finished_before = {}, False, finished.step
            # a checkpoint that could not be saved; streamed shards (data.cache_limit) that could not come
            except (CheckpointError, DataError, remote.StorageError) as e:
                raise SystemExit(f"error: {e}") from e
        if run.rank == 0:
            checkpointer.prune()  # what waited for its upload
        if stopped:
            raise SystemExit(EXIT_STOPPED)
        if not mirror.complete:
            raise SystemExit(EXIT_NOT_MIRRORED)
        if run.rank == 0 and finished_before is not None:
            logger.info("%s is finished: its checkpoint is at step %d of train.max_steps=%d; nothing was trained or "
                        "changed (raise train.max_steps to train further). Next: %s", run.run_dir, finished_before,
                        cfg.train.max_steps, next_steps(run.run_dir, cfg.name))
        elif run.rank == 0:
            logger.info("finished %s at step %d%s. Next: %s", run.run_dir, cfg.train.max_steps,
                        f", mirrored to {mirror.url}" if mirror.url else "", next_steps(run.run_dir, cfg.name))
        return last


def train(run: Run, checkpointer: Checkpointer) -> tuple[dict, bool]:
    """The loop: (the last logged training metrics, whether a stop request ended it early)."""
    cfg = run.cfg
    engine, start_step, saved_state = start_or_resume(run, checkpointer)
    objective = run.objective
    log = metrics.MetricsLogger(run.run_dir, cfg.logging, cfg.name, OmegaConf.to_container(cfg, resolve=True),
                                saved_state.get("wandb_id"), enabled=run.rank == 0, start_step=start_step)
    sampler = run.sampler
    batches = micro_batch_stream(run, sampler, start_step)
    fetched = run.corpus.start_reading(cfg.seed, cfg.train.global_batch_size, start_step)  # streamed data only
    if fetched and run.rank == 0:
        logger.info("data: %s", fetched)
    eval_collator = objective.collator(cfg.seed + 1)
    progress = metrics.TrainProgress(run, objective, engine, log, start_step, sampler)
    watch_loss = cfg.precision != "fp16"  # fp16: DeepSpeed's loss scaling owns overflows

    if start_step == 0:  # the untrained baseline, so curves and comparisons start from where training started
        progress.log_validation(0, evaluate(run, eval_collator))
    step, stop_requested = start_step, False
    with StopRequest(run.run_dir, run.rank) as stop:
        while step < cfg.train.max_steps:
            torch.manual_seed(step_seed(cfg.seed, run.rank, step))
            nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
            for _ in range(sampler.accumulation):
                loss, stats = objective.train_step(engine, to_device(next(batches), run.device))
                progress.add(stats)
                nonfinite |= ~torch.isfinite(loss)
            step += 1
            run.corpus.step_done(step)
            stop_requested, diverged = vote(stop, nonfinite & watch_loss, run.device)
            if diverged:
                on_nonfinite_loss(run, checkpointer, step)
            done = step == cfg.train.max_steps
            progress.step_done(step, log_now=step % cfg.train.log_every == 0 or done)
            if step % cfg.train.eval_every == 0 or done:
                progress.log_validation(step, evaluate(run, eval_collator))
            tag = checkpointer.step_done(engine, step, lambda: client_state(run, step, log.run_id), stop_requested)
            if stop_requested:
                if run.rank == 0:
                    logger.warning("stopped at step %d after a stop request (checkpoint %s); run the same command "
                                   "to resume", step, checkpointer.path(tag))
                break
    progress.close()
    log.close()
    run.corpus.close()
    return progress.last, stop_requested


def on_nonfinite_loss(run: Run, checkpointer: Checkpointer, step: int) -> None:
    """``train.on_nonfinite``: stop (naming the step and the checkpoint to resume from), or skip (DeepSpeed's check
    of the gradients drops the update; said here)."""
    if run.cfg.train.on_nonfinite == "stop":
        raise SystemExit(f"error: the training loss is not finite at step {step} (train.on_nonfinite=stop); "
                         f"{checkpointer.describe_latest()}. Resume from it with a lower optim.lr or "
                         f"train.on_nonfinite=skip")
    if run.rank == 0:
        logger.warning("non-finite training loss at step %d: its update is dropped (train.on_nonfinite=skip)", step)

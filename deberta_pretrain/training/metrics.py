"""Throughput, MFU (model FLOPs: ``deberta.flops``), and where metrics go: ``metrics.jsonl``, wandb, the progress
bar."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time

import torch
import torch.distributed as dist

from ..deberta.flops import detect_peak_tflops
from ..fileio import atomic_write
from ..layout import METRICS, WANDB_DIR

logger = logging.getLogger(__name__)

class MetricsLogger:
    """Where metrics go, for pretraining and fine-tuning alike: JSON lines in ``<folder>/metrics.jsonl`` and the same
    records in wandb (``logging.wandb``: the ``logging`` section), from rank 0 only. Records carry ``step`` and
    ``split``; wandb gets ``<split>/<metric>``. ``start_step``: drop the records after it first (a resumed run
    logs those steps again; None keeps every record); ``wandb_step``: use ``step`` as wandb's step (False where
    several runs of one command restart at step 1)."""

    def __init__(self, folder: str, logging_cfg, name: str, config: dict | None, resume_id: str | None = None,
                 enabled: bool = True, start_step: int | None = 0, wandb_step: bool = True):
        self.enabled, self.wandb_step = enabled, wandb_step
        self.wandb_run = None
        self.path = os.path.join(folder, METRICS)
        self.run_id = resume_id
        if not enabled:
            return
        self._forget_after(start_step)
        wandb_cfg = logging_cfg.wandb
        if wandb_cfg.mode != "disabled":
            import wandb  # noqa: PLC0415

            self.run_id = resume_id or secrets.token_hex(4)
            os.makedirs(os.path.join(folder, WANDB_DIR), exist_ok=True)
            self.wandb_run = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, name=name,
                                        id=self.run_id, resume="allow", mode=wandb_cfg.mode, dir=folder,
                                        tags=list(wandb_cfg.get("tags") or []), config=config)

    def _forget_after(self, start_step: int | None) -> None:
        """Drop the records of steps that the run is about to do again (those logged after the checkpoint it resumes
        from, or all of them when it starts afresh; None keeps them), so that the file holds one record per step and
        split; and a last line that a kill cut short, so that the next record starts a line of its own."""
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        complete = [line for line in lines if line.endswith("\n")]
        kept = [line for line in complete
                if start_step is None or (start_step > 0 and json.loads(line)["step"] <= start_step)]
        if len(kept) != len(lines):
            atomic_write(self.path, lambda f: f.write("".join(kept).encode()))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean, sort_keys=True) + "\n")
        if self.wandb_run is not None:
            prefix = record.get("split", "train")
            self.wandb_run.log({f"{prefix}/{k}": v for k, v in clean.items() if k not in ("step", "split")
                                and isinstance(v, (int, float))}, step=record["step"] if self.wandb_step else None)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def progress_bar(total: int, description: str, enabled: bool, initial: int = 0):
    """The progress bar of a training loop (pretraining or fine-tuning; ``logging.progress_bar``), or None."""
    if not enabled:
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, initial=initial, desc=description, dynamic_ncols=True)


def read_metrics(run_dir: str) -> list[dict]:
    """The records of ``metrics.jsonl``; with restarts, the last record of each (split, step) wins. A last line cut
    short by a kill (no newline) is left out: the resumed run logs that step again. Any other bad line is a
    ``ValueError`` naming the file and line."""
    latest: dict = {}
    path = os.path.join(run_dir, METRICS)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                latest[(record.get("split", "train"), record["step"])] = record
            except (ValueError, KeyError, AttributeError):
                if line.endswith("\n"):
                    raise ValueError(f"{path}:{number}: not a metrics record: {line.strip()[:80]!r}") from None
    return [latest[k] for k in sorted(latest, key=lambda k: (k[0], k[1]))]


class TrainProgress:
    """The training side of reporting: sums the objective's per-micro-batch statistics on the device, and at each
    log step reads them once (all-reduced), adds throughput, MFU and learning rate, and writes the record to the
    metrics log and the progress bar (rank 0)."""

    def __init__(self, run, objective, engine, log: MetricsLogger, start_step: int, sampler):
        cfg = run.cfg
        self.cfg, self.objective, self.engine, self.log, self.sampler = cfg, objective, engine, log, sampler
        self.world, self.clock = run.world, time.perf_counter
        self.totals = torch.zeros(len(objective.stat_names), dtype=torch.float64, device=run.device)
        self.window_start, self.window_steps, self.last = self.clock(), 0, {}
        self.skipped_at_start = engine.skipped_steps
        self.corpus = run.corpus
        self.sources = run.corpus.sources if run.corpus.mixture else []  # weight 0 included: 0 samples
        self.read = [source.name for source in run.corpus.used]  # in the order of the sampler's counts
        length = run.corpus.max_seq_length
        self.flops_per_token = objective.flops_per_token(length, cfg.train.global_batch_size * length)
        self.peak = cfg.logging.peak_tflops or (detect_peak_tflops(torch.cuda.get_device_name(run.device))
                                                if run.on_gpu else None)
        self.bar = progress_bar(cfg.train.max_steps, cfg.name, run.rank == 0 and cfg.logging.progress_bar,
                                start_step)
        # with impl.compile the first step of a start (and the evaluation before it) compiles the model
        self.compile_clock = self.clock() if cfg.impl.compile and run.rank == 0 else None

    def add(self, stats) -> None:
        self.totals += stats

    def step_done(self, step: int, log_now: bool) -> None:
        if self.compile_clock is not None:
            logger.info("impl.compile: compiling the model and the first step of this start took %.1f s",
                        self.clock() - self.compile_clock)
            self.compile_clock = None
        self.window_steps += 1
        if log_now:
            self._log_train(step)
        if self.bar is not None:
            self.bar.update(1)

    def _log_train(self, step: int) -> None:
        dist.all_reduce(self.totals)
        totals = dict(zip(self.objective.stat_names, self.totals.tolist()))
        elapsed = max(self.clock() - self.window_start, 1e-9)
        tokens_per_s = totals["tokens"] / elapsed
        record = {"step": step, "split": "train", **self.objective.summarize(totals, "train"),
                  "lr": self.engine.get_lr()[0], "tokens_per_s": tokens_per_s,
                  "epoch": self.sampler.epoch_of_step(step), "step_time_s": elapsed / self.window_steps,
                  "mfu": (tokens_per_s * self.flops_per_token / (self.peak * 1e12 * self.world)) if self.peak else None}
        counts = dict(zip(self.read, self.sampler.samples_per_source(step)))
        for source in self.sources:
            samples = counts.get(source.name, 0)
            record[f"samples/{source.name}"] = samples
            record[f"epoch/{source.name}"] = samples / max(len(source.train), 1)
        record.update(self.corpus.reading_metrics())  # streamed data: fetch waits, cache size
        if self.cfg.precision == "fp16" or self.cfg.train.on_nonfinite == "skip":
            # updates DeepSpeed dropped (fp16: loss-scale overflows; skip: non-finite gradients) in this start
            record["skipped_steps"] = int(self.engine.skipped_steps - self.skipped_at_start)
        self.log.log(record)
        self.last = record
        if self.bar is not None:
            shown = {key: f"{record[key]:.4f}" for key in ("loss", *self.objective.progress_keys)}
            self.bar.set_postfix(**shown, lr=f"{record['lr']:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                                 **({"mfu": f"{record['mfu']:.1%}"} if record["mfu"] else {}))
        self.totals.zero_()
        self.window_start, self.window_steps = self.clock(), 0

    def log_validation(self, step: int, results: dict[str, dict]) -> None:
        """Log the records of ``evaluate`` ({split: metrics}), and a line each in train.log."""
        for split, result in results.items():
            self.log.log({"step": step, "split": split, **result})
            if self.log.enabled:
                shown = [key for key in ("loss", "accuracy", *self.objective.progress_keys, "auc") if key in result]
                logger.info("%s at step %d: %s", split, step, ", ".join(f"{key} {result[key]:.4f}" for key in shown))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

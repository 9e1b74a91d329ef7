"""One command from a checkpoint to a score table: every task of the suite (or the one task), every seed, the
median and spread over seeds, written as ``results.json`` and ``results.md`` and printed.

Results go to ``<run dir>/finetune/<suite>/step_<N>/`` for a checkpoint of one of our runs (so that several
pretraining steps can be compared, and pruning old checkpoints keeps them), else to ``<model folder>/finetune/
<suite>/``; ``from_scratch=true`` (the same model freshly initialised) to ``.../finetune/<suite>/from_scratch/``;
``output=`` overrides. Each finished task is saved as ``<task>.json`` at once: an interrupted suite
run again skips the tasks it finished with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import torch
from omegaconf import OmegaConf

from ..fileio import write_json_atomic
from ..training.distributed import init_distributed, on_cpu
from .pretrained import load_pretrained
from .trainer import TaskData, finetune_once

logger = logging.getLogger("deberta_pretrain.finetune")
CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf")


def suite_tasks(cfg) -> tuple[str, list]:
    """(suite name, task configs): ``suite=`` loads each task's ``conf/task/<name>.yaml`` and applies the suite's
    ``overrides``; otherwise the one ``task=``."""
    if cfg.suite:
        tasks = []
        for name in cfg.suite.tasks:
            task = OmegaConf.load(os.path.join(CONF, "task", f"{name}.yaml"))
            tasks.append(OmegaConf.merge(task, cfg.suite.get("overrides") or {}))
        return cfg.suite.name, tasks
    if not cfg.task:
        raise ValueError("choose task=<name> (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, custom) or "
                         "suite=<name> (glue, glue-small)")
    return cfg.task.name, [cfg.task]


def settings_hash(cfg, task, pretrained) -> str:
    settings = {"task": OmegaConf.to_container(task, resolve=True), "seeds": list(cfg.seeds),
                "train": OmegaConf.to_container(cfg.train, resolve=True), "precision": cfg.precision,
                "checkpoint": os.path.abspath(str(cfg.checkpoint)), "step": pretrained.step,
                "from_scratch": cfg.from_scratch}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def summarize(runs: list[dict]) -> dict:
    """Median, min and max over seeds of each best-dev metric."""
    keys = [k for k in runs[0]["best"] if k not in ("step", "selection_score", "train_loss", "predictions")]
    return {k: {"median": float(np.median([r["best"][k] for r in runs])),
                "min": float(min(r["best"][k] for r in runs)), "max": float(max(r["best"][k] for r in runs))}
            for k in keys}


def markdown(results: dict) -> str:
    step = "none (from scratch)" if results["from_scratch"] else results["pretraining_step"]
    lines = [f"# {results['suite']}: {results['checkpoint']}", "",
             f"pretraining step: {step}; seeds: {results['seeds']}; best dev evaluation per seed, median (min-max) "
             f"over seeds", "", "| task | metric | median | min | max |", "|---|---|---|---|---|"]
    for name, task in results["tasks"].items():
        for metric, value in task["summary"].items():
            lines.append(f"| {name} | {metric} | {100 * value['median']:.2f} | {100 * value['min']:.2f} | "
                         f"{100 * value['max']:.2f} |")
    return "\n".join(lines) + "\n"


def output_folder(cfg, suite: str, pretrained) -> str:
    if cfg.output:
        return os.path.abspath(cfg.output)
    folder = os.path.join(pretrained.where, "finetune", suite)
    if cfg.from_scratch:
        return os.path.join(folder, "from_scratch")
    return os.path.join(folder, f"step_{pretrained.step:08d}") if pretrained.step is not None else folder


def run_finetune(cfg) -> dict:
    """Fine-tune and evaluate every task of ``cfg`` (``conf/finetune.yaml``); returns the results written."""
    rank, world, local_rank = init_distributed()
    device = torch.device("cpu" if on_cpu() else f"cuda:{local_rank}")
    suite, tasks = suite_tasks(cfg)
    pretrained = load_pretrained(cfg.checkpoint)
    out = output_folder(cfg, suite, pretrained)
    if rank == 0:
        os.makedirs(out, exist_ok=True)
    log = None
    if rank == 0 and cfg.logging.wandb.mode != "disabled":
        import wandb  # noqa: PLC0415

        wandb_run = wandb.init(project=cfg.logging.wandb.project, entity=cfg.logging.wandb.entity,
                               name=f"finetune-{suite}", mode=cfg.logging.wandb.mode, dir=out,
                               config=OmegaConf.to_container(cfg, resolve=True))
        log = (lambda record: wandb_run.log({f"{record['task']}/{k}": v for k, v in record.items()
                                             if isinstance(v, (int, float))}))
    results = {"suite": suite, "checkpoint": os.path.abspath(str(cfg.checkpoint)), "from_scratch": cfg.from_scratch,
               "pretraining_step": None if cfg.from_scratch else pretrained.step, "seeds": list(cfg.seeds), "tasks": {}}
    for task in tasks:
        task_file = os.path.join(out, f"{task.name}.json")
        digest = settings_hash(cfg, task, pretrained)
        if os.path.isfile(task_file):
            with open(task_file, encoding="utf-8") as f:
                done = json.load(f)
            if done.get("settings_hash") == digest:
                logger.info("%s: finished earlier with these settings, skipped (%s)", task.name, task_file)
                results["tasks"][task.name] = done
                continue
        data = TaskData(cfg, task, pretrained.tokenizer)
        runs = [finetune_once(cfg, task, pretrained, data, int(seed), rank, world, device, log) for seed in cfg.seeds]
        states = [r.pop("state", None) for r in runs]
        record = {"settings_hash": digest, "summary": summarize(runs), "runs": runs, "problem": data.problem,
                  "labels": [str(v) for v in data.labels]}
        if rank == 0:
            if cfg.export:
                from .export import export_classifier  # noqa: PLC0415

                best = max(range(len(runs)), key=lambda i: runs[i]["best"]["selection_score"])
                record["export"] = export_classifier(states[best], pretrained, data, os.path.join(out, task.name))
            write_json_atomic(task_file, record)
        results["tasks"][task.name] = record
    if rank == 0:
        write_json_atomic(os.path.join(out, "results.json"), results)
        table = markdown(results)
        with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
            f.write(table)
        print(table)
        if log is not None:
            wandb_run.summary.update({f"{name}/{metric}": value["median"] for name, task in results["tasks"].items()
                                      for metric, value in task["summary"].items()})
            wandb_run.finish()
    results["output"] = out
    return results

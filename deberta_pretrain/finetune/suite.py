"""One command from a checkpoint to a score table: every task of the suite (or the one task), every seed, the
median and spread over seeds, written as ``results.json`` and ``results.md`` and printed.

Results go to ``<run dir>/finetune/<suite>/step_<N>/`` for a checkpoint of one of our runs (so that several
pretraining steps can be compared, and pruning old checkpoints keeps them), else to ``<model folder>/finetune/
<suite>/``; ``from_scratch=true`` (the same model freshly initialised) to ``.../finetune/<suite>/from_scratch/``;
``output=`` overrides. Each finished task is saved as ``<task>.json`` at once, with the settings it was made with
(:func:`task_settings`): a run again skips the tasks it finished with the same settings, and refuses, before
anything trains, to reuse or replace results of other settings.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from ..config import validate_finetune
from ..config_keys import ABSENT, changed_keys
from ..fileio import claim_output, sha256_file, write_json_atomic
from ..training.distributed import init_distributed, on_cpu
from .data import load_task, split_files, suite_tasks
from .metrics import better
from .pretrained import load_pretrained
from .trainer import TaskData, finetune_once

__all__ = ["run_finetune", "suite_tasks", "task_settings", "finished_results"]
logger = logging.getLogger("deberta_pretrain.finetune")
NOT_SETTINGS = ("output", "logging")
MARKER = "finetune.json"  # written first into a results folder: a re-run after a failure knows the folder as its own  # where results go and how progress is shown: no score depends on them


def checkpoint_files(pretrained) -> dict:
    """Size and modification time of each file of a model folder (which an export may rewrite in place); {} for a
    checkpoint of a run, which its step names."""
    if pretrained.step is not None or not os.path.isdir(pretrained.where):
        return {}
    files = {}
    for name in sorted(os.listdir(pretrained.where)):
        path = os.path.join(pretrained.where, name)
        if os.path.isfile(path):
            stat = os.stat(path)
            files[name] = f"{stat.st_size} bytes, modified {datetime.fromtimestamp(stat.st_mtime).isoformat()}"
    return files


def task_settings(cfg, task, pretrained) -> dict:
    """Everything a task's scores depend on, as recorded with them: the whole resolved config but ``output`` and
    ``logging``, with the task's own config (a suite's overrides applied) in place of ``task``/``suite``; the
    checkpoint's absolute path, pretraining step and (a model folder) files; the sha256 (16 digits) of each data
    file."""
    settings = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                if k not in (*NOT_SETTINGS, "task", "suite")}
    settings["task"] = OmegaConf.to_container(task, resolve=True)
    settings["checkpoint"] = os.path.abspath(str(cfg.checkpoint))
    settings["pretraining_step"] = pretrained.step
    settings["checkpoint_files"] = checkpoint_files(pretrained)
    splits = dict.fromkeys(["train", *task.eval_splits])
    settings["data_files"] = {os.path.abspath(path): sha256_file(path)[:16]
                              for split in splits for path in split_files(task, split) or ()}
    return json.loads(json.dumps(settings, default=str))  # as it reads back from the results file


def changed_settings(old: dict, new: dict, limit: int = 6) -> str:
    """The keys whose values differ, with both values: ``optim.weight_decay 0.01 -> 0.1, ...`` ('' if none)."""
    changes = changed_keys(old, new)

    def show(value):
        return "(none)" if value is ABSENT else json.dumps(value)

    parts = [f"{key} {show(a)} -> {show(b)}" for key, (a, b) in list(changes.items())[:limit]]
    return ", ".join(parts) + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def finished_results(task, out: str, settings: dict) -> dict | None:
    """The results in ``<out>/<task>.json`` when they were made with ``settings``, None when there are none.
    Results of other settings are neither reused nor replaced: ``ValueError`` names the keys that changed, with
    both values, and the way out."""
    task_file = os.path.join(out, f"{task.name}.json")
    if not os.path.exists(task_file):
        return None
    way_out = f"use output=<another folder>, or delete {task_file} to fine-tune {task.name} again"
    try:
        with open(task_file, encoding="utf-8") as f:
            done = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"task {task.name}: {task_file} is not a readable results file ({e}); {way_out}") from None
    if not isinstance(done, dict) or not isinstance(done.get("settings"), dict):
        raise ValueError(f"task {task.name}: {task_file} holds results that predate recorded settings (an earlier "
                         f"version wrote only a hash), so they cannot be matched to this run's; {way_out}")
    changes = changed_settings(done["settings"], settings)
    if changes:
        raise ValueError(f"task {task.name}: {task_file} holds results of other settings ({changes}); {way_out}")
    return done


def summarize(runs: list[dict]) -> dict:
    """Median, min and max over seeds of each best-dev metric, over the seeds where it is defined (null where it is
    defined for none; ``undefined_seeds`` counts the others)."""
    keys = [k for k in runs[0]["best"] if k not in ("step", "selection_score", "train_loss", "predictions")]
    summary = {}
    for key in keys:
        values = [r["best"][key] for r in runs if r["best"][key] is not None]
        summary[key] = ({"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}
                        if values else {"median": None, "min": None, "max": None})
        if len(values) < len(runs):
            summary[key]["undefined_seeds"] = len(runs) - len(values)
    return summary


def markdown(results: dict) -> str:
    step = "none (from scratch)" if results["from_scratch"] else results["pretraining_step"]
    lines = [f"# {results['suite']}: {results['checkpoint']}", "",
             f"pretraining step: {step}; seeds: {results['seeds']}; best dev evaluation per seed, median (min-max) "
             f"over seeds (n/a: undefined, e.g. a correlation of constant predictions)", "",
             "| task | metric | median | min | max |", "|---|---|---|---|---|"]

    def percent(value):
        return "n/a" if value is None else f"{100 * value:.2f}"

    for name, task in results["tasks"].items():
        for metric, value in task["summary"].items():
            lines.append(f"| {name} | {metric} | {percent(value['median'])} | {percent(value['min'])} | "
                         f"{percent(value['max'])} |")
    return "\n".join(lines) + "\n"


def output_folder(cfg, suite: str, pretrained) -> str:
    if cfg.output:
        return os.path.abspath(cfg.output)
    folder = os.path.join(pretrained.where, "finetune", suite)
    if cfg.from_scratch:
        return os.path.join(folder, "from_scratch")
    return os.path.join(folder, f"step_{pretrained.step:08d}") if pretrained.step is not None else folder


def run_finetune(cfg) -> dict:
    """Fine-tune and evaluate every task of ``cfg`` (``conf/finetune.yaml``); returns the results written. Before
    anything trains, the config, the results already in the output folder and every task's data are checked."""
    validate_finetune(cfg)
    rank, world, local_rank = init_distributed()
    device = torch.device("cpu" if on_cpu() else f"cuda:{local_rank}")
    suite, tasks = suite_tasks(cfg)
    pretrained = load_pretrained(cfg.checkpoint)
    out = output_folder(cfg, suite, pretrained)
    # Results of other settings are refused task by task below. The default folder lies inside the model's folder
    # (an export, a run) by design; output= may not lie in another tool's output.
    claim_output(out, (MARKER, "results.json", *(f"{task.name}.json" for task in tasks)), "fine-tuning results folder",
                 overwrite=True, nested_ok=not cfg.output)
    settings = {task.name: task_settings(cfg, task, pretrained) for task in tasks}
    finished = {task.name: finished_results(task, out, settings[task.name]) for task in tasks}
    pending = [task for task in tasks if finished[task.name] is None]
    # Every task's data is checked before anything is written or trained: the first task's is kept, the others' are
    # read again in their turn (a whole suite's would not fit in memory at once).
    prepared = {pending[0].name: TaskData(cfg, pending[0], pretrained.tokenizer)} if pending else {}
    for task in pending[1:]:
        load_task(task)
    dist.barrier()  # every rank checked the folder before rank 0 writes to it
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        write_json_atomic(os.path.join(out, MARKER), {"suite": suite, "checkpoint": os.path.abspath(cfg.checkpoint)})
    wandb_run = start_wandb(cfg, suite, out) if rank == 0 else None
    log = None if wandb_run is None else (lambda record: wandb_run.log(
        {f"{record['task']}/{k}": v for k, v in record.items() if isinstance(v, (int, float))}))
    results = {"suite": suite, "checkpoint": os.path.abspath(str(cfg.checkpoint)), "from_scratch": cfg.from_scratch,
               "pretraining_step": None if cfg.from_scratch else pretrained.step, "seeds": list(cfg.seeds), "tasks": {}}
    for task in tasks:
        if finished[task.name] is not None:
            logger.info("%s: finished earlier with these settings, skipped (%s)", task.name,
                        os.path.join(out, f"{task.name}.json"))
            results["tasks"][task.name] = finished[task.name]
            continue
        data = prepared.pop(task.name, None) or TaskData(cfg, task, pretrained.tokenizer)
        runs = [finetune_once(cfg, task, pretrained, data, int(seed), rank, world, device, log) for seed in cfg.seeds]
        results["tasks"][task.name] = task_record(cfg, task, pretrained, data, runs, settings[task.name], out, rank)
    if rank == 0:
        write_results(results, out, wandb_run)
    results["output"] = out
    return results


def start_wandb(cfg, suite: str, out: str):
    """The wandb run of this command (``logging.wandb``), or None."""
    if cfg.logging.wandb.mode == "disabled":
        return None
    import wandb  # noqa: PLC0415

    return wandb.init(project=cfg.logging.wandb.project, entity=cfg.logging.wandb.entity, name=f"finetune-{suite}",
                      mode=cfg.logging.wandb.mode, dir=out, config=OmegaConf.to_container(cfg, resolve=True))


def task_record(cfg, task, pretrained, data, runs: list, settings: dict, out: str, rank: int) -> dict:
    """A finished task's record (every seed's runs, their summary, the settings); rank 0 exports the best seed's
    model (``export=true``) and writes the record to ``<out>/<task>.json``."""
    states = [r.pop("state", None) for r in runs]
    record = {"settings": settings, "summary": summarize(runs), "runs": runs, "problem": data.problem,
              "labels": list(data.labels)}
    if rank == 0:
        if cfg.export:
            from .export import export_classifier  # noqa: PLC0415

            best = 0
            for i, run in enumerate(runs):
                if better(run["best"]["selection_score"], runs[best]["best"]["selection_score"]):
                    best = i
            record["export"] = export_classifier(states[best], pretrained, data, os.path.join(out, task.name))
        write_json_atomic(os.path.join(out, f"{task.name}.json"), record)
    return record


def write_results(results: dict, out: str, wandb_run) -> None:
    """``results.json``, ``results.md`` (printed too), and the medians in the wandb summary."""
    write_json_atomic(os.path.join(out, "results.json"), results)
    table = markdown(results)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    if wandb_run is not None:
        wandb_run.summary.update({f"{name}/{metric}": value["median"] for name, task in results["tasks"].items()
                                  for metric, value in task["summary"].items()})
        wandb_run.finish()

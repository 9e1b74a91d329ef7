"""One command from a checkpoint to a score table: every task of the suite (or the one task), every point of its
recipe's grid (:mod:`.grid`) with every seed, the setting chosen by its median dev score, and the median and spread
over seeds, written as ``results.json`` and ``results.md`` and printed.

Results go to ``<run dir>/finetune/<suite>/step_<N>/`` for a checkpoint of one of our runs (so that several
pretraining steps can be compared, and pruning old checkpoints keeps them), else to ``<model folder>/finetune/
<suite>/``; ``from_scratch=true`` (the same model freshly initialised) to ``.../finetune/<suite>/from_scratch/``;
``output=`` overrides. Each finished run is saved in ``<task>.json`` at once, with the settings the task was made
with (:func:`task_settings`: everything but the seed and the grid's values, which identify a run): the same command
again trains only the runs that are missing (a grid that grew: only its new points), and a command with other
settings is refused before anything trains, never reusing or replacing results of other settings.
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

from ..config_keys import ABSENT, changed_keys
from ..fileio import claim_output, sha256_file, write_json_atomic
from ..training.checkpoint import FINETUNE_RESULTS_MARKER
from ..training.distributed import init_distributed, on_cpu
from ..training.metrics import MetricsLogger
from .config import validate_finetune
from .data import load_task, split_files, suite_tasks
from .grid import (GRID_KEYS, advice, choose, describe, grid_points, point_key, run_key, runs_by_key, score,
                   with_point)
from .metrics import learned_nothing
from .pretrained import load_pretrained
from .trainer import NonFiniteLoss, TaskData, check_engine, finetune_once

__all__ = ["run_finetune", "suite_tasks", "task_settings", "earlier_record"]
logger = logging.getLogger("deberta_pretrain.finetune")
NOT_SETTINGS = ("output", "logging", "export")  # where results go, how progress is shown, whether the best model is
# written: no score depends on them
MARKER = FINETUNE_RESULTS_MARKER  # written first into a results folder: a re-run after a failure knows it as its own


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
    """Everything a task's scores depend on but the seed and the grid's values, as recorded with them: the whole
    resolved config but ``output``, ``logging``, ``export`` and ``seeds``, with the task's own config (a suite's
    overrides applied) in place of ``task``/``suite``; the checkpoint's absolute path, pretraining step and (a model
    folder) files; the sha256 (16 digits) of each data file."""
    settings = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                if k not in (*NOT_SETTINGS, "task", "suite", "seeds")}
    settings["task"] = OmegaConf.to_container(task, resolve=True)
    for key in GRID_KEYS:  # a run's own settings, with its seed (see grid.run_key)
        settings["task"]["recipe"].pop(key)
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


def earlier_record(task, out: str, settings: dict) -> dict:
    """The record in ``<out>/<task>.json`` when it was made with ``settings`` ({} when there is none): its runs are
    reused. Results of other settings are neither reused nor replaced: ``ValueError`` names the keys that changed,
    with both values, and the way out."""
    task_file = os.path.join(out, f"{task.name}.json")
    if not os.path.exists(task_file):
        return {}
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


def missing_runs(task, seeds, record: dict) -> list:
    """(point, seed) of every run of ``task``'s grid and ``seeds`` that ``record`` does not hold."""
    done = runs_by_key(record.get("runs", []))
    return [(point, seed) for point in grid_points(task.recipe) for seed in seeds if run_key(seed, point) not in done]


def summarize(runs: list[dict]) -> dict:
    """Median, min and max over seeds of each best-dev metric, over the seeds where it is defined (null where it is
    defined for none; ``undefined_seeds`` counts the others, ``diverged_seeds`` the runs whose loss diverged)."""
    trained = [r for r in runs if r.get("best")]
    keys = [k for k in trained[0]["best"] if k not in ("step", "selection_score", "train_loss", "predictions")]
    summary = {}
    for key in keys:
        values = [r["best"][key] for r in trained if r["best"][key] is not None]
        summary[key] = ({"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}
                        if values else {"median": None, "min": None, "max": None})
        if len(values) < len(trained):
            summary[key]["undefined_seeds"] = len(trained) - len(values)
        if len(trained) < len(runs):
            summary[key]["diverged_seeds"] = len(runs) - len(trained)
    return summary


def markdown(results: dict) -> str:
    """The score table: each task's chosen setting (where its recipe is a grid), the median and range over seeds of
    each metric, then the grid's median dev scores and any warning."""
    step = "none (from scratch)" if results["from_scratch"] else results["pretraining_step"]
    lines = [f"# {results['suite']}: {results['checkpoint']}", "",
             f"pretraining step: {step}; seeds: {results['seeds']}; best dev evaluation per seed, median (min-max) "
             f"over seeds (n/a: undefined, e.g. a correlation of constant predictions)", "",
             "| task | setting | metric | median | min | max |", "|---|---|---|---|---|---|"]

    def percent(value):
        return "n/a" if value is None else f"{100 * value:.2f}"

    notes = []
    for name, task in results["tasks"].items():
        setting = task["chosen"]["described"] or f"lr {task['chosen']['lr']:g}"
        for metric, value in task["summary"].items():
            lines.append(f"| {name} | {setting} | {metric} | {percent(value['median'])} | {percent(value['min'])} | "
                         f"{percent(value['max'])} |")
        if len(task["grid"]) > 1:
            points = [entry["recipe"] for entry in task["grid"]]
            scores = ", ".join(f"{describe(entry['recipe'], points)}: {percent(entry['median_selection_score'])}"
                               for entry in task["grid"])
            notes.append(f"- {name}: setting chosen by the median dev score over seeds ({scores})")
        if task.get("warning"):
            notes.append(f"- warning: {task['warning']}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


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
    for task in tasks:
        check_engine(cfg, task, world, device.type == "cuda")
    pretrained = load_pretrained(cfg.checkpoint)
    out = output_folder(cfg, suite, pretrained)
    # Results of other settings are refused task by task below. The default folder lies inside the model's folder
    # (an export, a run) by design; output= may not lie in another tool's output.
    claim_output(out, (MARKER, "results.json", *(f"{task.name}.json" for task in tasks)), "fine-tuning results folder",
                 overwrite=True, nested_ok=not cfg.output)
    seeds = [int(seed) for seed in cfg.seeds]
    settings, records, todo, prepared = plan_runs(cfg, tasks, seeds, pretrained, out)
    dist.barrier()  # every rank checked the folder before rank 0 writes to it
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        write_json_atomic(os.path.join(out, MARKER), {"suite": suite, "checkpoint": os.path.abspath(cfg.checkpoint)})
    log = MetricsLogger(out, cfg.logging, f"finetune-{suite}", OmegaConf.to_container(cfg, resolve=True),
                        enabled=rank == 0, start_step=None, wandb_step=False)  # every run's records, kept
    results = {"suite": suite, "checkpoint": os.path.abspath(str(cfg.checkpoint)), "from_scratch": cfg.from_scratch,
               "pretraining_step": None if cfg.from_scratch else pretrained.step, "seeds": seeds, "tasks": {}}
    for task in tasks:
        record = {**records[task.name], "settings": settings[task.name]}
        record.pop("export", None)  # said again below, for the run it is of
        runs = runs_by_key(record.get("runs", []))
        states, data = {}, None  # states: the best run's weights of each point trained now (export=true)
        if not todo[task.name]:
            logger.info("%s: every run finished earlier with these settings, skipped (%s)", task.name,
                        os.path.join(out, f"{task.name}.json"))
        for point, seed in todo[task.name]:
            data = data or prepared.pop(task.name, None) or TaskData(cfg, task, pretrained.tokenizer)
            run = train_run(cfg, task, point, seed, pretrained, data, (rank, world, device), log)
            state, key, kept = run.pop("state", None), run_key(seed, point), states.get(point_key(point))
            if state is not None and (kept is None or score(run) > score(runs[kept[0]])):
                states[point_key(point)] = (key, state)
            runs[key] = run
            record.update(problem=data.problem, labels=list(data.labels), runs=list(runs.values()))
            if rank == 0:  # after every run: an interrupted grid resumes where it stopped
                write_json_atomic(os.path.join(out, f"{task.name}.json"), record)
        results["tasks"][task.name] = task_record(cfg, task, seeds, record, runs, states, pretrained, data, out,
                                                  rank)
    if rank == 0:
        write_results(results, out, log)
    results["output"] = out
    return results


def plan_runs(cfg, tasks, seeds: list, pretrained, out: str) -> tuple[dict, dict, dict, dict]:
    """Per task: its settings, the record of earlier runs in ``out`` (refused where their settings differ), the
    runs still to train; and the first pending task's data. Every task's data is checked before anything is
    written or trained: the first task's is kept, the others' are read again in their turn (a whole suite's would
    not fit in memory at once)."""
    settings = {task.name: task_settings(cfg, task, pretrained) for task in tasks}
    records = {task.name: earlier_record(task, out, settings[task.name]) for task in tasks}
    todo = {task.name: missing_runs(task, seeds, records[task.name]) for task in tasks}
    pending = [task for task in tasks if todo[task.name]]
    prepared = {pending[0].name: TaskData(cfg, pending[0], pretrained.tokenizer)} if pending else {}
    for task in pending[1:]:
        load_task(task)
    return settings, records, todo, prepared


def train_run(cfg, task, point: dict, seed: int, pretrained, data, where: tuple, log) -> dict:
    """One run of ``task`` at grid ``point`` with ``seed`` (``where``: rank, world size, device), with whether it
    learned anything. A run of a grid whose loss turns non-finite is recorded as diverged (the grid's other points
    go on); with a single point there is nothing to choose from, and the error stops the command."""
    try:
        run = finetune_once(cfg, with_point(task, point), pretrained, data, seed, *where, log)
    except NonFiniteLoss as e:
        if len(grid_points(task.recipe)) == 1:
            raise
        if where[0] == 0:
            logger.warning("%s (grid point %s: recorded as diverged)", e, run_key(seed, point))
        return {"seed": seed, "recipe": point, "best": None, "last": None, "diverged": str(e),
                "nothing_learned": "diverged"}
    dev_targets = {split: dev["labels"] for split, dev in data.dev.items()}
    why = learned_nothing(run, data.train["labels"], dev_targets, data.problem, data.metrics, task.selection)
    return {**run, "recipe": point, "nothing_learned": why}


def task_record(cfg, task, seeds: list, record: dict, runs: dict, states: dict, pretrained, data, out: str,
                rank: int) -> dict:
    """A task's record: every run (this command's and earlier ones), the grid's median dev scores, the chosen
    setting and its summary over seeds, and a warning when its runs learned nothing; rank 0 exports the chosen
    setting's best seed (``export=true``) and writes ``<out>/<task>.json``."""
    points = grid_points(task.recipe)
    try:
        chosen, chosen_runs, scored = choose(runs, points, seeds)
    except ValueError as e:
        raise NonFiniteLoss(f"task {task.name}: {e}") from None
    setting = describe(chosen, points)
    record.update(runs=list(runs.values()), summary=summarize(chosen_runs), chosen={**chosen, "described": setting},
                  grid=[{"recipe": point, "median_selection_score": median} for point, median in scored],
                  warning=nothing_learned_warning(cfg, task, chosen, chosen_runs, points))
    if record["warning"] and rank == 0:
        logger.warning(record["warning"])
    if rank == 0:
        if cfg.export:
            export_chosen(record, task, chosen, chosen_runs, states, pretrained, data, out)
        write_json_atomic(os.path.join(out, f"{task.name}.json"), record)
    return record


def nothing_learned_warning(cfg, task, chosen: dict, chosen_runs: list, points: list) -> str | None:
    """A warning when at least half of the chosen setting's seeds learned nothing, with the likely cause and the key
    to change (``+suite.overrides.recipe.lr`` in a suite)."""
    reasons = [run["nothing_learned"] for run in chosen_runs if run.get("nothing_learned")]
    if not reasons or 2 * len(reasons) < len(chosen_runs):
        return None
    key = "+suite.overrides.recipe.lr" if cfg.suite else "task.recipe.lr"
    capped = [f"train.{k}={cfg.train[k]}" for k in ("max_steps", "max_train_samples") if cfg.train[k] is not None]
    remedy = (f"the run was cut short by {' and '.join(capped)}: raise or drop it before changing the rate"
              if capped else advice(chosen, points, key))
    return (f"task {task.name}: nothing was learned with {describe(chosen, points) or 'lr {:g}'.format(chosen['lr'])}"
            f" ({len(reasons)} of {len(chosen_runs)} seeds; {reasons[0]}); {remedy}")


def export_chosen(record: dict, task, chosen: dict, chosen_runs: list, states: dict, pretrained, data,
                  out: str) -> None:
    """Export the chosen setting's best seed to ``<out>/<task>/`` when its weights are at hand (it was trained by
    this command); else say that the export is not of it."""
    best = max(chosen_runs, key=score)
    kept = states.get(point_key(chosen))
    if kept is None or kept[0] != run_key(best["seed"], chosen):
        logger.warning("%s: the chosen setting's best run (%s) was trained by an earlier command, whose weights are "
                       "not kept: no export; delete %s and run again to export it", task.name,
                       run_key(best["seed"], chosen), os.path.join(out, f"{task.name}.json"))
        return
    from .export import export_classifier  # noqa: PLC0415

    record["export"] = {"folder": export_classifier(kept[1], pretrained, data, os.path.join(out, task.name)),
                        "run": kept[0]}


def write_results(results: dict, out: str, log: MetricsLogger) -> None:
    """``results.json``, ``results.md`` (printed too), and the medians in the wandb summary."""
    write_json_atomic(os.path.join(out, "results.json"), results)
    table = markdown(results)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    print(f"wrote {out} (results.md, results.json, metrics.jsonl)")
    if log.wandb_run is not None:
        log.wandb_run.summary.update({f"{name}/{metric}": value["median"] for name, task in results["tasks"].items()
                                      for metric, value in task["summary"].items()})
    log.close()

"""What a task's trials come to: its settings as recorded (and the check that earlier results in the folder were
made with the same), the summary over seeds, the warning when nothing was learned, and the score table
(``results.json``, ``results.md``)."""

from __future__ import annotations

import json
import os
from datetime import datetime

import numpy as np
from omegaconf import OmegaConf

from ..config_keys import ABSENT, changed_keys
from ..fileio import sha256_file, write_json_atomic
from ..layout import RESULTS, RESULTS_TABLE, task_record
from ..training.metrics import MetricsLogger
from .data import split_files
from .grid import GRID_KEYS, advice, describe

NOT_SETTINGS = ("output", "logging", "export")  # where results go, how progress is shown, whether the best model is
# written: no score depends on them


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
    for key in GRID_KEYS:  # a trial's own settings, with its seed (see grid.trial_key)
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
    """The record in ``<out>/<task>.json`` when it was made with ``settings`` ({} when there is none): its trials
    are reused. Results of other settings are neither reused nor replaced: ``ValueError`` names the keys that changed,
    with both values, and the way out."""
    task_file = os.path.join(out, task_record(task.name))
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


def summarize(trials: list[dict]) -> dict:
    """Median, min and max over seeds of each best-dev metric of ``trials`` (records, :meth:`.Trial.to_json`), over
    the seeds where it is defined (null where it is defined for none; ``undefined_seeds`` counts the others,
    ``diverged_seeds`` the trials whose loss diverged)."""
    trained = [r for r in trials if r.get("best")]
    keys = [k for k in trained[0]["best"] if k not in ("step", "selection_score", "train_loss", "predictions")]
    summary = {}
    for key in keys:
        values = [r["best"][key] for r in trained if r["best"][key] is not None]
        summary[key] = ({"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}
                        if values else {"median": None, "min": None, "max": None})
        if len(values) < len(trained):
            summary[key]["undefined_seeds"] = len(trained) - len(values)
        if len(trained) < len(trials):
            summary[key]["diverged_seeds"] = len(trials) - len(trained)
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


def nothing_learned_warning(sections, task, chosen: dict, chosen_trials: list, points: list) -> str | None:
    """A warning when at least half of the chosen setting's seeds learned nothing, with the likely cause and the key
    to change (``+suite.overrides.recipe.lr`` in a suite). ``sections``: the config's ``suite`` and ``train``."""
    reasons = [trial["nothing_learned"] for trial in chosen_trials if trial.get("nothing_learned")]
    if not reasons or 2 * len(reasons) < len(chosen_trials):
        return None
    key = "+suite.overrides.recipe.lr" if sections.suite else "task.recipe.lr"
    train = sections.train
    capped = [f"train.{k}={train[k]}" for k in ("max_steps", "max_train_samples") if train[k] is not None]
    remedy = (f"the run was cut short by {' and '.join(capped)}: raise or drop it before changing the rate"
              if capped else advice(chosen, points, key))
    return (f"task {task.name}: nothing was learned with {describe(chosen, points) or 'lr {:g}'.format(chosen['lr'])}"
            f" ({len(reasons)} of {len(chosen_trials)} seeds; {reasons[0]}); {remedy}")


def write_results(results: dict, out: str, log: MetricsLogger) -> None:
    """``results.json``, ``results.md`` (printed too), and the medians in the wandb summary."""
    write_json_atomic(os.path.join(out, RESULTS), results)
    table = markdown(results)
    with open(os.path.join(out, RESULTS_TABLE), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    print(f"wrote {out} (results.md, results.json, metrics.jsonl)")
    if log.wandb_run is not None:
        log.wandb_run.summary.update({f"{name}/{metric}": value["median"] for name, task in results["tasks"].items()
                                      for metric, value in task["summary"].items()})
    log.close()

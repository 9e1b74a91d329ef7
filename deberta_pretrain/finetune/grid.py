"""A task's recipe as a grid, and the choice of its setting on dev.

``task.recipe.lr`` (and ``epochs``, ``batch_size``, ``warmup_steps``) may be a list: every combination (a *point*)
is trained with every seed (a *trial*, :class:`~.trial.Trial`) and each trial scored on dev; the point whose median
best-dev score over the seeds is highest is the one a task's table reports. This is how the papers that report GLUE
tables choose the learning rate (DeBERTa, RoBERTa and ELECTRA tune it on dev over a small grid), and what lets one
default serve models of any size.
A trial is identified by its seed and its point, so a grid that grows trains only its new points.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from omegaconf import OmegaConf

GRID_KEYS = ("lr", "epochs", "batch_size", "warmup_steps")
WARMUP_SHARE = 0.06  # warmup_steps null: this share of a trial's steps (as RoBERTa's GLUE recipes)
# Each key's values as one type, so that 3 and 3.0 (or a value read back from JSON) name the same trial.
NORMAL = {"lr": float, "epochs": float, "batch_size": int, "warmup_steps": lambda v: None if v is None else int(v)}


def grid_values(recipe) -> dict:
    """{key: [values]} of the grid keys of ``recipe`` (a scalar is a list of one), each of its key's type."""
    values = {}
    for key in GRID_KEYS:
        value = recipe[key]
        listed = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
        values[key] = [NORMAL[key](v) for v in listed]
    return values


def grid_points(recipe) -> list[dict]:
    """Every combination of the grid keys' values, as ``{lr, epochs, batch_size, warmup_steps}``."""
    values = grid_values(recipe)
    return [dict(zip(GRID_KEYS, combination)) for combination in itertools.product(*values.values())]


def with_point(task, point: dict):
    """A copy of ``task`` whose recipe holds the single values of ``point``."""
    fields = OmegaConf.to_container(task, resolve=True)
    fields["recipe"].update(point)
    return OmegaConf.create(fields)


def point_key(point: dict) -> str:
    """What identifies a point of a grid: its values, each of its key's type."""
    return " ".join(f"{key} {NORMAL[key](point[key])}" for key in GRID_KEYS)


def trial_key(seed: int, point: dict) -> str:
    """What identifies a trial of a task: its seed and its point."""
    return f"seed {int(seed)} {point_key(point)}"


def trials_by_key(records: list) -> dict:
    """{trial key: record} of a task's recorded trials (:meth:`.Trial.to_json`)."""
    return {trial_key(record["seed"], record["recipe"]): record for record in records}


def describe(point: dict, points: list) -> str:
    """The keys in which ``points`` differ, with ``point``'s values (``lr 0.0005``); '' for a single point."""
    varying = [key for key in GRID_KEYS if len({p[key] for p in points}) > 1]

    def show(key):
        if point[key] is None:  # warmup_steps null
            return f"warmup {100 * WARMUP_SHARE:g} %"
        return f"{key} {point[key]:g}" if isinstance(point[key], float) else f"{key} {point[key]}"

    return ", ".join(show(key) for key in varying)


def score(record: dict) -> float:
    """A trial's best dev selection score (``record``: :meth:`.Trial.to_json`); -inf for a trial that diverged or
    whose score is undefined, so that a point whose seeds fail cannot win on the seeds that did not."""
    best = record.get("best")
    return -math.inf if not best or best["selection_score"] is None else best["selection_score"]


def choose(trials: dict, points: list, seeds: list) -> tuple[dict, list, list]:
    """(the chosen point, its trials, [(point, median score or None)] of every point): the point with the best
    median dev score over ``seeds`` (a diverged trial counts as the worst score); ``trials`` maps :func:`trial_key`
    to a trial's record. ``ValueError`` when every trial of every point diverged."""
    scored, chosen = [], None
    for point in points:
        point_trials = [trials[trial_key(seed, point)] for seed in seeds]
        median = float(np.median([score(trial) for trial in point_trials]))
        scored.append((point, median if math.isfinite(median) else None))
        trained = any(trial.get("best") for trial in point_trials)
        if trained and (chosen is None or median > chosen[1]):
            chosen = (point, median)
    if chosen is None:
        raise ValueError(f"every run of the grid {[describe(p, points) or p for p in points]} diverged: try lower "
                         f"learning rates")
    return chosen[0], [trials[trial_key(seed, chosen[0])] for seed in seeds], scored


def advice(chosen: dict, points: list, key: str) -> str:
    """What to change when the chosen setting learned nothing (``key``: where the rate is set): rates above the
    grid's highest when that was chosen (too low a rate is the usual cause: a base model's rate does not move a
    small model), else more epochs (higher rates were worse or diverged)."""
    highest = max(point["lr"] for point in points)
    if chosen["lr"] == highest:
        return (f"the learning rate is likely too low for the model's size: try higher rates, e.g. "
                f"{key}='[{highest * 3:g},{highest * 10:g}]'")
    return f"higher rates did worse or diverged: try more epochs ({key.rsplit('.', 1)[0]}.epochs)"

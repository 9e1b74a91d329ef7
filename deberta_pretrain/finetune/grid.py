"""A task's recipe as a grid, and the choice of its setting on dev.

``task.recipe.lr`` (and ``epochs``, ``batch_size``, ``warmup_steps``) may be a list: every combination (a *point*)
is trained with every seed and each run scored on dev; the point whose median best-dev score over the seeds is
highest is the one a task's table reports. This is how the papers that report GLUE tables choose the learning rate
(DeBERTa, RoBERTa and ELECTRA tune it on dev over a small grid), and what lets one default serve models of any size.
A run is identified by its seed and its point, so a grid that grows trains only its new points.
"""

from __future__ import annotations

import itertools

import numpy as np
from omegaconf import OmegaConf

from .metrics import better

GRID_KEYS = ("lr", "epochs", "batch_size", "warmup_steps")


def grid_values(recipe) -> dict:
    """{key: [values]} of the grid keys of ``recipe`` (a scalar is a list of one)."""
    values = {}
    for key in GRID_KEYS:
        value = recipe[key]
        values[key] = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
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


def run_key(seed: int, point: dict) -> str:
    """What identifies a run of a task: its seed and its point."""
    return "seed {} {}".format(seed, " ".join(f"{key} {point[key]}" for key in GRID_KEYS))


def describe(point: dict, points: list) -> str:
    """The keys in which ``points`` differ, with ``point``'s values (``lr 0.0005``); '' for a single point."""
    varying = [key for key in GRID_KEYS if len({p[key] for p in points}) > 1]
    return ", ".join(f"{key} {point[key]:g}" if isinstance(point[key], float) else f"{key} {point[key]}"
                     for key in varying)


def median_score(runs: list) -> float | None:
    """The median over ``runs`` of their best dev selection score (over the runs where it is defined: not a run that
    diverged)."""
    scores = [r["best"]["selection_score"] for r in runs if r["best"] and r["best"]["selection_score"] is not None]
    return float(np.median(scores)) if scores else None


def choose(runs: dict, points: list, seeds: list) -> tuple[dict, list, list]:
    """(the chosen point, its runs, [(point, median score)] of every point): the point with the best median dev
    score over ``seeds``; ``runs`` maps :func:`run_key` to a run."""
    scored = [(point, median_score([runs[run_key(seed, point)] for seed in seeds])) for point in points]
    chosen = scored[0]
    for candidate in scored[1:]:
        if better(candidate[1], chosen[1]):
            chosen = candidate
    return chosen[0], [runs[run_key(seed, chosen[0])] for seed in seeds], scored

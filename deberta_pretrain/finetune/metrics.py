"""Each GLUE task's official metrics, computed by scikit-learn and SciPy, and the checks of a task's metric names."""

from __future__ import annotations

import math

import numpy as np

METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")
PROBLEM_METRICS = {"classification": ("accuracy", "f1", "mcc"), "regression": ("pearson", "spearman")}
DEFAULT_METRICS = {"classification": ("accuracy", "f1"), "regression": ("pearson", "spearman")}


def compute(names, predictions, labels) -> dict:
    """``predictions``: class ids (classification) or values (regression), aligned with ``labels``. A metric that
    is undefined on them (Pearson or Spearman of constant predictions) is None: JSON has no NaN."""
    from scipy import stats  # noqa: PLC0415
    from sklearn import metrics  # noqa: PLC0415

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out = {}
    for name in names:
        if name == "accuracy":
            value = float(metrics.accuracy_score(labels, predictions))
        elif name == "f1":
            average = "binary" if len(set(labels.tolist()) | set(predictions.tolist())) <= 2 else "macro"
            value = float(metrics.f1_score(labels, predictions, average=average))
        elif name == "mcc":
            value = float(metrics.matthews_corrcoef(labels, predictions))
        elif name == "pearson":
            value = float(stats.pearsonr(predictions, labels)[0])
        elif name == "spearman":
            value = float(stats.spearmanr(predictions, labels)[0])
        else:
            raise ValueError(f"unknown metric {name!r}; known: {METRICS}")
        out[name] = value if math.isfinite(value) else None
    return out


def metric_keys(names, splits) -> list[str]:
    """The keys of a dev evaluation's scores: the metric names for one split, ``<name>_<split>`` for several."""
    splits = list(splits)
    return list(names) if len(splits) == 1 else [f"{name}_{split}" for split in splits for name in names]


def task_metrics(task, problem: str) -> list[str]:
    """The dev metrics of ``task``: its ``metrics``, else the defaults of ``problem``."""
    return list(task.metrics) if task.metrics else list(DEFAULT_METRICS[problem])


def check_metrics(task, problem: str | None) -> None:
    """``task.metrics`` are known metrics of ``problem`` and ``task.selection`` is one of the scores they give;
    ``problem`` None (inferred from the data later): they must suit one of the problems. ``ValueError`` names the
    task and key."""
    unknown = [name for name in task.metrics or () if name not in METRICS]
    if unknown:
        raise ValueError(f"task {task.name}: task.metrics: unknown metric(s) {unknown}; known: {list(METRICS)}")
    problems = [problem] if problem else list(PROBLEM_METRICS)
    errors = []
    for candidate in problems:
        names = task_metrics(task, candidate)
        wrong = [name for name in names if name not in PROBLEM_METRICS[candidate]]
        keys = metric_keys(names, task.eval_splits)
        if wrong:
            errors.append(f"task.metrics: {wrong} do not apply to {candidate} (its metrics: "
                          f"{list(PROBLEM_METRICS[candidate])})")
        elif task.selection and task.selection not in keys:
            errors.append(f"task.selection: {task.selection!r} is not one of the dev scores {keys} (from "
                          f"task.metrics and task.eval_splits)")
        else:
            return
    raise ValueError(f"task {task.name}: " + "; or ".join(errors))


def selection_score(result: dict, names, selection: str | None) -> float | None:
    """The dev score that picks the best evaluation: the task's selection metric, else (as upstream) the mean of
    its metrics; None where one of them is undefined."""
    values = [result[selection]] if selection else [result[n] for n in names]
    if any(v is None for v in values):
        return None
    return float(np.mean(values))


def better(score: float | None, than: float | None) -> bool:
    """Whether selection score ``score`` beats ``than`` (an undefined score, None, beats nothing)."""
    return score is not None and (than is None or score > than)


def prior_loss(targets: list, problem: str) -> float:
    """The training loss of a model that learned nothing from the text: cross-entropy of predicting every class's
    share of ``targets`` (their entropy, in nats); for regression, the squared error of predicting their mean."""
    values = np.asarray(targets, dtype=np.float64)
    if problem == "regression":
        return float(values.var())
    shares = np.bincount(values.astype(np.int64)) / len(values)
    shares = shares[shares > 0]
    return float(-(shares * np.log(shares)).sum())


def constant_score(train_targets: list, dev_targets: dict, problem: str, names, selection: str | None) -> float:
    """The best dev selection score of a model that learned nothing from the text: one that predicts the same for
    every example (any one class; for regression the training mean). An undefined score (the correlation of a
    constant) counts as 0."""
    constants = sorted(set(train_targets)) if problem == "classification" else [float(np.mean(train_targets))]
    best = -math.inf
    for constant in constants:
        scores = {}
        for split, targets in dev_targets.items():
            suffix = "" if len(dev_targets) == 1 else f"_{split}"
            scores.update({f"{k}{suffix}": v for k, v in compute(names, [constant] * len(targets), targets).items()})
        value = selection_score(scores, metric_keys(names, dev_targets), selection)
        best = max(best, 0.0 if value is None else value)
    return best


def learned_nothing(trial: dict, train_targets: list, dev_targets: dict, problem: str, names,
                    selection: str | None) -> str | None:
    """Why ``trial`` (a fine-tuning trial's record, :meth:`.Trial.to_json`) learned nothing, or None: its final
    training loss (over its last steps) did not fall below that of predicting the label prior (:func:`prior_loss`),
    or its best dev score is no better than that of a constant prediction (:func:`constant_score`)."""
    loss, prior = trial["final_train_loss"], prior_loss(train_targets, problem)
    if loss >= prior:
        return f"final training loss {loss:.3f}, predicting the label prior {prior:.3f}"
    best, constant = trial["best"]["selection_score"], constant_score(train_targets, dev_targets, problem, names,
                                                                      selection)
    if best is None or best <= constant + 1e-9:
        shown = "undefined" if best is None else f"{best:.3f}"
        return f"best dev score {shown}, a constant prediction scores {constant:.3f}"
    return None

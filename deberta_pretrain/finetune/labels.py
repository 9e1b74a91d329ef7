"""A task's labels, checked: the problem they pose (classification or regression), the classes, and each record's
training target; an unusable label is a ``ValueError`` that names the file, row and value."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .data import Split


def configured_problem(task) -> str | None:
    """The problem the config sets: ``task.problem``, else what ``task.num_labels`` implies, else None."""
    if task.problem:
        return task.problem
    if task.num_labels:
        return "regression" if int(task.num_labels) == 1 else "classification"
    return None


def label_value(task, split: Split, i: int, problem: str | None):
    """The label of record ``i``: text, an int (a whole float becomes one unless ``problem`` is regression) or a
    finite float. ``ValueError`` names the file, row and value of a label that is missing, boolean, not finite or of
    a type ``problem`` (None: not known yet) cannot take."""
    record, where = split.records[i], split.where(i)
    if task.label_field not in record:
        raise ValueError(f"{where}: no label field {task.label_field!r} (task.label_field; fields: {sorted(record)})")
    value = record[task.label_field]
    if value is None:
        raise ValueError(f"{where}: the label {task.label_field!r} is empty")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{where}: label {value!r} is neither text nor a number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: label {value} is not a finite number")
        if value.is_integer() and problem != "regression":
            value = int(value)
    if problem == "regression" and isinstance(value, str):
        raise ValueError(f"{where}: label {value!r} is not a number (a regression task)")
    if problem == "classification" and isinstance(value, float):
        raise ValueError(f"{where}: label {value!r} is not a class (classes are text or integers); a value to "
                         f"predict needs task.problem=regression")
    return value


def check_one_kind(split: Split, values: list) -> None:
    """Labels are all text or all numbers: a mix (a typo, a shifted column) is named at the first label of the
    rarer kind."""
    texts = [i for i, v in enumerate(values) if isinstance(v, str)]
    if not texts or len(texts) == len(values):
        return
    numbers = [i for i, v in enumerate(values) if not isinstance(v, str)]
    odd, usual = (texts, numbers) if len(texts) <= len(numbers) else (numbers, texts)
    raise ValueError(f"{split.where(odd[0])}: label {values[odd[0]]!r} is {'text' if odd is texts else 'a number'}, "
                     f"unlike most labels (e.g. {values[usual[0]]!r} at {split.where(usual[0])})")


def label_space(task, train: Split) -> tuple[str, list]:
    """(problem, labels) from the training labels: ``regression`` with no label list, or ``classification`` with
    the classes in the order of their ids: ``0..task.num_labels-1`` where that is set, else the values seen,
    sorted (labels -1 and 1 are ids 0 and 1). The problem is ``task.problem``, else inferred: text or whole numbers
    are classes, other numbers a regression. ``ValueError`` for an unusable label (see :func:`label_value`), a
    single class, or a regression whose labels are all equal."""
    problem = configured_problem(task)
    values = [label_value(task, train, i, problem) for i in range(len(train.records))]
    check_one_kind(train, values)
    if problem is None:
        problem = "regression" if any(isinstance(v, float) for v in values) else "classification"
    distinct = set(values)
    if len(distinct) < 2:
        needs = "two classes or more" if problem == "classification" else "labels that differ"
        raise ValueError(f"{train.label}: every training label ({task.label_field!r}) is {values[0]!r}: a "
                         f"{problem} needs {needs}")
    if problem == "regression":
        return problem, []
    if task.num_labels:
        return problem, list(range(int(task.num_labels)))
    return problem, sorted(distinct)


def label_targets(task, split: Split, problem: str, labels: list) -> list:
    """The target of each record of ``split``: the label's index in ``labels`` (classification) or its value.
    ``ValueError`` names the file, row and value of an unusable label, or of a class not in ``labels`` (one that
    training never saw, or outside ``0..task.num_labels-1``)."""
    if problem == "regression":
        return [float(label_value(task, split, i, problem)) for i in range(len(split.records))]
    ids = {value: i for i, value in enumerate(labels)}
    targets = []
    for i in range(len(split.records)):
        value = label_value(task, split, i, problem)
        if value not in ids:
            if task.num_labels:
                unlabelled = "; GLUE marks an unlabelled example -1" if value == -1 else ""
                reason = f"is not one of the classes 0..{len(labels) - 1} (task.num_labels={len(labels)}{unlabelled})"
            else:
                reason = f"is not among the training labels {labels}"
            raise ValueError(f"{split.where(i)}: label {value!r} {reason}")
        targets.append(ids[value])
    return targets

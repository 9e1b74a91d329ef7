"""Task data: GLUE through ``datasets`` (the hub's ``nyu-mll/glue``, or a local folder in its schema) and custom
files (CSV, TSV, JSON lines or parquet, read by :mod:`.readers`), checked (:mod:`.labels`); :mod:`.batches` tokenizes
them.

A local GLUE folder holds one file per split named after it (``train.jsonl``, ``validation.parquet``,
``validation_matched.csv`` ...) with the corpus's columns (e.g. ``sentence1``, ``sentence2``, ``label``); a
folder holding one such folder per task (``/data/glue/sst2/`` ...) serves a whole suite.

Every split a task uses is read and checked before a model is built (:func:`load_task`): an unreadable line, a
missing text, a label that the problem cannot take (missing, boolean, not finite, text in a regression, a fraction in
a classification), a single class, or a dev label that training never saw is a ``ValueError`` that names the file,
the row (the data row of a CSV/TSV/parquet file, the line of a JSON lines file) and the value.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from . import metrics
from .labels import label_space, label_targets
from .readers import read_file
from .tasks import BUILT_IN


@dataclass
class Split:
    """The records of one split, where each comes from (for messages that name the file and row) and, once
    checked, the training target of each (a class id or a value)."""

    label: str  # the file(s) or data set, for messages about the whole split
    records: list[dict]
    origins: list[tuple[str, str, int]]  # (file, "row" | "line" | "record" | "example", number) of each record
    targets: list = field(default_factory=list)

    def where(self, i: int) -> str:
        file, unit, number = self.origins[i]
        return f"{file}, {unit} {number}"


def split_files(task, split: str) -> list[str] | None:
    """The files of ``split`` (``data_from: files`` or a local GLUE folder), or None (built-in task, the hub)."""
    if task.data_from in BUILT_IN:
        return None
    if task.data_from == "files":
        path = task.get(split)
        if not path:
            raise ValueError(f"task.{split}: a file is needed for task {task.name} (data_from=files)")
        files = sorted(glob.glob(os.path.expanduser(path))) or [path]
    elif task.data_dir:  # the task's folder, or a folder holding one per task (one setting serves a suite)
        folder = os.path.expanduser(str(task.data_dir))
        if os.path.isdir(os.path.join(folder, task.name)):
            folder = os.path.join(folder, task.name)
        files = sorted(glob.glob(os.path.join(folder, f"{split}.*")))
        if not files:
            raise FileNotFoundError(f"task.data_dir: {folder} has no {split}.jsonl/.parquet/.csv/.tsv")
    else:
        return None
    for file in files:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"task {task.name}: {file} does not exist")
    return files


def load_split(task, split: str) -> Split:
    """The records of ``split`` of ``task`` (a task config), unchecked."""
    if task.data_from in BUILT_IN:
        label = f"built-in task {task.data_from} ({split})"
        records = BUILT_IN[task.data_from](split)
        return Split(label, records, [(label, "example", i + 1) for i in range(len(records))])
    files = split_files(task, split)
    if files is None:
        import datasets  # noqa: PLC0415

        label = f"{task.hub_dataset} ({task.glue_config}, {split})"
        records = list(datasets.load_dataset(task.hub_dataset, task.glue_config, split=split))
        return Split(label, records, [(label, "row", i + 1) for i in range(len(records))])
    records, origins = [], []
    for file in files:
        file_records, file_origins = read_file(file, task.label_field)
        records += file_records
        origins += file_origins
    return Split(", ".join(files), records, origins)


def check_texts(task, split: Split) -> None:
    """Every record has each of ``task.text_fields`` as text; ``ValueError`` names the first that does not."""
    fields = list(task.text_fields)
    missing = [f for f in fields if f not in split.records[0]]
    if missing:
        raise ValueError(f"{split.where(0)}: no field {missing} in the data (fields: {sorted(split.records[0])}; "
                         f"task.text_fields names them)")
    for i, record in enumerate(split.records):
        for name in fields:
            if not isinstance(record.get(name), str):
                value = f"is {record[name]!r}, not text" if name in record else "is missing"
                raise ValueError(f"{split.where(i)}: field {name!r} {value}")


@dataclass
class LoadedTask:
    """A task's splits, read and checked, with their targets; its problem, classes and dev metrics."""

    problem: str
    labels: list  # the classes in the order of their ids (the values as in the data); [] for a regression
    metrics: list[str]
    train: Split
    dev: dict[str, Split]


def load_task(task) -> LoadedTask:
    """Read the training split and every ``task.eval_splits`` and check them (texts, labels, the metrics for the
    problem); raises ``ValueError``/``OSError`` naming the file, row and value. Nothing is built yet."""
    train = load_split(task, "train")
    check_texts(task, train)
    problem, labels = label_space(task, train)
    metrics.check_metrics(task, problem)
    train.targets = label_targets(task, train, problem, labels)
    dev = {}
    for name in task.eval_splits:
        split = load_split(task, name)
        check_texts(task, split)
        split.targets = label_targets(task, split, problem, labels)
        dev[name] = split
    return LoadedTask(problem, labels, metrics.task_metrics(task, problem), train, dev)


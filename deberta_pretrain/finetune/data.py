"""Task data: GLUE through ``datasets`` (the hub's ``nyu-mll/glue``, or a local folder in its schema) and custom
files (CSV, TSV, JSON lines or parquet), checked and tokenized into single sentences or pairs.

A local GLUE folder holds one file per split named after it (``train.jsonl``, ``validation.parquet``,
``validation_matched.csv`` ...) with the corpus's columns (e.g. ``sentence1``, ``sentence2``, ``label``); a
folder holding one such folder per task (``/data/glue/sst2/`` ...) serves a whole suite.

Every split a task uses is read and checked before a model is built (:func:`load_task`): an unreadable line, a
missing text, a label that the problem cannot take (missing, boolean, not finite, text in a regression, a fraction in
a classification), a single class, or a dev label that training never saw is a ``ValueError`` that names the file,
the row (the data row of a CSV/TSV/parquet file, the line of a JSON lines file) and the value.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
from omegaconf import OmegaConf

from . import metrics

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv", ".tsv")
CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf")


# The built-in task (every machine has its text): which family of CPython help topics a sentence comes from.
PYTHON_HELP_FAMILIES = {
    "statements": ("assert", "break", "continue", "del", "for", "global", "if", "import", "nonlocal", "pass",
                   "raise", "return", "try", "while", "with", "yield"),
    "numbers": ("binary", "bitwise", "comparisons", "floating", "imaginary", "integers", "numbers", "numeric-types",
                "power", "shifting", "unary", "booleans", "truth"),
    "containers": ("dict", "lists", "sequence-types", "slicings", "strings", "string-methods", "subscriptions",
                   "typesmapping", "typesseq", "typesseq-mutable", "formatstrings"),
}


def help_sentences(text: str) -> list[str]:
    """The sentences and paragraphs of a help topic, whitespace normalised."""
    import re  # noqa: PLC0415

    return [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", text)]


def python_help_task(split: str) -> list[dict]:
    """Sentences (6 words or more) of the help topics in :data:`PYTHON_HELP_FAMILIES`, labelled with the family;
    a fifth of them (by a hash of the sentence) is the validation split."""
    import hashlib  # noqa: PLC0415

    from pydoc_data.topics import topics  # noqa: PLC0415

    records = []
    for family, names in PYTHON_HELP_FAMILIES.items():
        for name in names:
            for sentence in help_sentences(topics[name]):
                held_out = int(hashlib.sha256(sentence.encode()).hexdigest(), 16) % 5 == 0
                if len(sentence.split()) >= 6 and held_out == (split != "train"):
                    records.append({"sentence": sentence, "label": family})
    return records


def python_help_order_task(split: str) -> list[dict]:
    """Sentences (8 words or more) of every help topic, half of them with the words after the first shuffled:
    labelled ``original`` or ``shuffled``. Both classes hold the same tokens, so word counts cannot tell them
    apart: the task needs the word-order knowledge that pretraining brings. A fifth is the validation split."""
    import hashlib  # noqa: PLC0415
    import random  # noqa: PLC0415
    import re  # noqa: PLC0415

    from deberta_pretrain.data.sources import python_help_topics  # noqa: PLC0415

    records, seen = [], set()
    for topic in python_help_topics():
        for sentence in help_sentences(topic):
            words = sentence.split()
            if len(words) < 8 or len(set(words[1:])) < 2 or sentence in seen or not re.search(r"[a-z]{3}", sentence):
                continue
            seen.add(sentence)
            digest = int(hashlib.sha256(sentence.encode()).hexdigest(), 16)
            if (digest % 5 == 0) != (split != "train"):
                continue
            label = "original"
            if digest // 5 % 2:
                rest, rng = words[1:], random.Random(digest)
                while rest == words[1:]:
                    rest = rng.sample(words[1:], len(rest))
                sentence, label = " ".join([words[0], *rest]), "shuffled"
            records.append({"sentence": sentence, "label": label})
    return records


BUILT_IN = {"python-help": python_help_task, "python-help-order": python_help_order_task}


def config_names(group: str) -> list[str]:
    """The names of the shipped ``conf/<group>/*.yaml`` files."""
    return sorted(name[:-5] for name in os.listdir(os.path.join(CONF, group)) if name.endswith(".yaml"))


def suite_tasks(cfg) -> tuple[str, list]:
    """(suite name, task configs): ``suite=`` loads each task's ``conf/task/<name>.yaml`` and applies the suite's
    ``overrides``; otherwise the one ``task=``."""
    if cfg.suite:
        tasks = []
        for name in cfg.suite.tasks:
            path = os.path.join(CONF, "task", f"{name}.yaml")
            if not os.path.isfile(path):
                raise ValueError(f"suite.tasks: there is no task {name!r} ({path} does not exist)")
            tasks.append(OmegaConf.merge(OmegaConf.load(path), cfg.suite.get("overrides") or {}))
        return cfg.suite.name, tasks
    if not cfg.task:
        raise ValueError(f"choose task=<name> ({', '.join(config_names('task'))}) or suite=<name> "
                         f"({', '.join(config_names('suite'))})")
    return cfg.task.name, [cfg.task]


@dataclass
class Split:
    """The records of one split, where each comes from (for messages that name the file and row) and, once
    checked, the training target of each (a class id or a value)."""

    source: str  # the file(s) or data set, for messages about the whole split
    records: list[dict]
    origins: list[tuple[str, str, int]]  # (file, "row" | "line" | "record" | "example", number) of each record
    targets: list = field(default_factory=list)

    def where(self, i: int) -> str:
        file, unit, number = self.origins[i]
        return f"{file}, {unit} {number}"


# ---- reading files ---------------------------------------------------------------------------------------------
# CSV, TSV and JSON lines are parsed here rather than by ``datasets``: its errors are tracebacks that name no line.
def read_text(path: str) -> str:
    """The text of a UTF-8 file (a byte order mark is dropped); ``ValueError`` names the line of the first byte
    that is not UTF-8, or of a NUL character (a UTF-16 file)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte {data[e.start]:#04x}); save the file as "
                         f"UTF-8") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ValueError(f"{path}, line {line}: a NUL character (a UTF-16 file?); save the file as UTF-8")
    return text


def csv_label(cell: str):
    """A CSV label cell as pandas reads it: an int or a float where it is one (``3``, ``0.5``, ``nan``, ``inf``),
    else the text; an empty cell is None."""
    if not cell.strip():
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def read_csv(path: str, delimiter: str, label_field: str) -> tuple[list[dict], list[tuple]]:
    """Records of a CSV/TSV file with a header row; blank lines are skipped. The label column's cells are read by
    :func:`csv_label`, the others are text."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    records, origins, header = [], [], None
    try:
        for row in reader:
            if not row:
                continue
            if header is None:
                header = row
                duplicates = sorted({name for name in header if header.count(name) > 1})
                if duplicates:
                    raise ValueError(f"{path}, line {reader.line_num}: the header names {duplicates} twice")
                continue
            if len(row) != len(header):
                separator = "tab" if delimiter == "\t" else repr(delimiter)
                raise ValueError(f"{path}, line {reader.line_num}: {len(row)} values, the header names {len(header)} "
                                 f"columns (a {separator} too many or too few, or a value to quote?)")
            record = dict(zip(header, row))
            if label_field in record:
                record[label_field] = csv_label(record[label_field])
            records.append(record)
            origins.append((path, "row", len(records)))
    except csv.Error as e:
        raise ValueError(f"{path}, line {reader.line_num}: {e}") from None
    if header is None:
        raise ValueError(f"{path}: empty file")
    if not records:
        raise ValueError(f"{path}: a header and no data rows")
    return records, origins


def read_json(path: str) -> tuple[list[dict], list[tuple]]:
    """Records of a JSON lines file (one object per line, blank lines skipped), or of a ``.json`` file that holds
    one array of objects."""
    text = read_text(path)
    if path.lower().endswith(".json") and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        origins = [(path, "record", i + 1) for i in range(len(records))]
    else:
        records, origins = [], []
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON text may hold U+2028
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg}, column {e.colno})") from None
            origins.append((path, "line", number))
    for record, (_, unit, number) in zip(records, origins):
        if not isinstance(record, dict):
            raise ValueError(f"{path}, {unit} {number}: a JSON object {{...}} per record, got {record!r:.60}")
    if not records:
        raise ValueError(f"{path}: empty file (no JSON records)")
    return records, origins


def read_parquet(path: str) -> tuple[list[dict], list[tuple]]:
    import pyarrow  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        records = pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({' '.join(str(e).split())})") from None
    if not records:
        raise ValueError(f"{path}: no rows")
    return records, [(path, "row", i + 1) for i in range(len(records))]


def read_file(path: str, label_field: str) -> tuple[list[dict], list[tuple]]:
    """(records, (file, unit, number) of each) of one CSV, TSV, JSON (lines) or parquet file; an empty, unreadable
    or malformed file is a one-line ``ValueError`` naming the file and line."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in EXTENSIONS:
        raise ValueError(f"{path}: unknown file type (use {', '.join(EXTENSIONS)})")
    if extension == ".parquet":
        return read_parquet(path)
    if extension in (".csv", ".tsv"):
        return read_csv(path, "\t" if extension == ".tsv" else ",", label_field)
    return read_json(path)


def split_files(task, split: str) -> list[str] | None:
    """The files of ``split`` (``source: files`` or a local GLUE folder), or None (built-in task, the hub)."""
    if task.source in BUILT_IN:
        return None
    if task.source == "files":
        path = task.get(split)
        if not path:
            raise ValueError(f"task.{split}: a file is needed for task {task.name} (source=files)")
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
    if task.source in BUILT_IN:
        source = f"built-in task {task.source} ({split})"
        records = BUILT_IN[task.source](split)
        return Split(source, records, [(source, "example", i + 1) for i in range(len(records))])
    files = split_files(task, split)
    if files is None:
        import datasets  # noqa: PLC0415

        source = f"{task.hub_dataset} ({task.glue_config}, {split})"
        records = list(datasets.load_dataset(task.hub_dataset, task.glue_config, split=split))
        return Split(source, records, [(source, "row", i + 1) for i in range(len(records))])
    records, origins = [], []
    for file in files:
        file_records, file_origins = read_file(file, task.label_field)
        records += file_records
        origins += file_origins
    return Split(", ".join(files), records, origins)


# ---- checking texts and labels ---------------------------------------------------------------------------------
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
        raise ValueError(f"{train.source}: every training label ({task.label_field!r}) is {values[0]!r}: a "
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


def encode(records: list[dict], task, tokenizer, max_length: int, targets: list) -> dict:
    """Token ids ``[CLS] a [SEP] (b [SEP])`` truncated longest-first to ``max_length``, segment ids, and the
    ``targets`` (checked labels, see :func:`label_targets`)."""
    fields = list(task.text_fields)
    if not 1 <= len(fields) <= 2:
        raise ValueError(f"task.text_fields: one or two fields, got {fields}")
    inputs, segments = [], []
    texts = [[r[f] for r in records] for f in fields]
    encoded = [tokenizer.encode_batch(column) if hasattr(tokenizer, "encode_batch") else
               [tokenizer.encode(t) for t in column] for column in texts]
    for i in range(len(records)):
        parts = [list(np.asarray(column[i]).tolist()) for column in encoded]
        budget = max_length - len(parts) - 1
        while sum(map(len, parts)) > budget:
            longest = max(range(len(parts)), key=lambda j: len(parts[j]))
            parts[longest].pop()
        ids = [tokenizer.cls_token_id] + parts[0] + [tokenizer.sep_token_id]
        segment = [0] * len(ids)
        if len(parts) == 2:
            ids += parts[1] + [tokenizer.sep_token_id]
            segment += [1] * (len(parts[1]) + 1)
        inputs.append(ids)
        segments.append(segment)
    return {"input_ids": inputs, "segments": segments, "labels": list(targets)}

"""Task data: GLUE through ``datasets`` (the hub's ``nyu-mll/glue``, or a local folder in its schema) and custom
files (CSV, JSON lines, parquet), tokenized into single sentences or pairs.

A local GLUE folder holds one file per split named after it (``train.jsonl``, ``validation.parquet``,
``validation_matched.csv`` ...) with the corpus's columns (e.g. ``sentence1``, ``sentence2``, ``label``); a
folder holding one such folder per task (``/data/glue/sst2/`` ...) serves a whole suite.
"""

from __future__ import annotations

import glob
import os

import numpy as np

EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}
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


def _builder(path: str) -> tuple[str, dict]:
    extension = os.path.splitext(path)[1].lower()
    if extension not in EXTENSIONS:
        raise ValueError(f"{path}: unknown file type (use {', '.join(EXTENSIONS)})")
    return EXTENSIONS[extension], ({"delimiter": "\t"} if extension == ".tsv" else {})


def load_split(task, split: str) -> list[dict]:
    """The records of ``split`` of ``task`` (a task config) as a list of dicts."""
    import datasets  # noqa: PLC0415

    if task.source == "python-help":
        return python_help_task(split)
    if task.source == "python-help-order":
        return python_help_order_task(split)
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
        corpus = datasets.load_dataset(task.hub_dataset, task.glue_config, split=split)
        return list(corpus)
    for file in files:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"task {task.name}: {file} does not exist")
    builder, options = _builder(files[0])
    return list(datasets.load_dataset(builder, data_files={split: files}, split=split, **options))


def label_space(task, train: list[dict]) -> tuple[str, list]:
    """(problem, labels): ``regression`` with no label list, or ``classification`` with the label values in the
    order of their ids. Taken from the task config where set, else inferred from the training labels (floats that
    are not whole numbers: regression; strings: classification over the sorted values; integers: 0..max)."""
    values = [r[task.label_field] for r in train if task.label_field in r]
    if not values:
        raise ValueError(f"task {task.name}: no label field {task.label_field!r} in the training data "
                         f"(fields: {sorted(train[0]) if train else []})")
    problem = task.problem
    if problem is None:
        floats = [v for v in values if isinstance(v, float)]
        problem = "regression" if floats and any(v != int(v) for v in floats) else "classification"
    if problem == "regression":
        return problem, []
    if task.num_labels:
        return problem, list(range(int(task.num_labels)))
    if all(isinstance(v, str) for v in values):
        return problem, sorted(set(values))
    return problem, list(range(int(max(values)) + 1))


def encode(records: list[dict], task, tokenizer, max_length: int, labels: list) -> dict:
    """Token ids ``[CLS] a [SEP] (b [SEP])`` truncated longest-first to ``max_length``, segment ids, targets."""
    fields = list(task.text_fields)
    if not 1 <= len(fields) <= 2:
        raise ValueError(f"task.text_fields: one or two fields, got {fields}")
    missing = [f for f in fields if records and f not in records[0]]
    if missing:
        raise ValueError(f"task {task.name}: no field {missing} in the data (fields: {sorted(records[0])})")
    label_ids = {value: i for i, value in enumerate(labels)}
    inputs, segments, targets = [], [], []
    texts = [[str(r[f]) for r in records] for f in fields]
    encoded = [tokenizer.encode_batch(column) if hasattr(tokenizer, "encode_batch") else
               [tokenizer.encode(t) for t in column] for column in texts]
    for i, record in enumerate(records):
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
        value = record.get(task.label_field)
        if labels:
            targets.append(label_ids.get(value, label_ids.get(str(value), -1)) if value is not None else -1)
        else:
            targets.append(float(value) if value is not None else float("nan"))
    return {"input_ids": inputs, "segments": segments, "labels": targets}

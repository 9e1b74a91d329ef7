"""Which tasks a command fine-tunes: a suite's tasks (``conf/task/<name>.yaml``, the suite's overrides applied) or
the one ``task=``; and the built-in tasks, whose text every machine has."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

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

    from ..data.inputs.python_help import python_help_topics  # noqa: PLC0415

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


def suite_tasks(suite, task) -> tuple[str, list]:
    """(suite name, task configs): a ``suite`` (the config's section) loads each task's ``conf/task/<name>.yaml``
    and applies the suite's ``overrides``; otherwise the one ``task``."""
    if suite:
        tasks = []
        for name in suite.tasks:
            path = os.path.join(CONF, "task", f"{name}.yaml")
            if not os.path.isfile(path):
                raise ValueError(f"suite.tasks: there is no task {name!r} ({path} does not exist)")
            tasks.append(OmegaConf.merge(OmegaConf.load(path), suite.get("overrides") or {}))
        return suite.name, tasks
    if not task:
        raise ValueError(f"choose task=<name> ({', '.join(config_names('task'))}) or suite=<name> "
                         f"({', '.join(config_names('suite'))})")
    return task.name, [task]

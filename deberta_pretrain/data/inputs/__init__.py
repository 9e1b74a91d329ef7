"""Data prep's inputs: the raw text that ``data_prep/prepare.py`` and ``data_prep/train_tokenizer.py`` read
(``input=<type>``, settings ``input.*``), as documents (strings) in a fixed order, one at a time, so an input larger
than memory streams through. ``input.paths`` may name files and globs in object storage too (``s3://...``).

One module per input type (a schema dataclass with its reader, see :class:`Input`), registered in :data:`INPUTS`;
each has its settings in ``conf/data_prep/input/<type>.yaml``. The types and their settings are described in
docs/data-prep.md.
"""

from __future__ import annotations

from typing import Iterator

from .base import Input
from .hf import HFInput
from .jsonl import JsonlInput
from .parquet import ParquetInput
from .python_help import PythonHelpInput, python_help_topics
from .text import TextInput

INPUTS: dict[str, type[Input]] = {t.type: t for t in (TextInput, JsonlInput, ParquetInput, HFInput, PythonHelpInput)}

__all__ = ["INPUTS", "Input", "input_type", "iter_documents", "python_help_topics", "total_bytes"]


def input_type(settings) -> type[Input]:
    """The input type that ``settings`` (the ``input`` mapping of a data-prep config) names by its ``type``."""
    kind = settings.get("type")
    if kind not in INPUTS:
        raise ValueError(f"input.type: {kind!r} is not one of {tuple(INPUTS)} (choose one with input=...)")
    return INPUTS[kind]


def iter_documents(settings: dict) -> Iterator[str]:
    """The documents of the configured input; its settings are checked (paths, corpus) before this returns."""
    return input_type(settings).documents(settings)


def total_bytes(settings: dict) -> int | None:
    """The input's size in bytes (None when unknown: a streamed corpus, compressed parquet)."""
    return input_type(settings).total_bytes(settings)

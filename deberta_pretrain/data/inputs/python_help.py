"""``input=python-help``: the English help topics that ship with CPython (``pydoc_data.topics``, about 0.5 MB), on
every machine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .base import Input


def python_help_topics() -> list[str]:
    """CPython's help topics (``help('FORMATTING')`` etc.), sorted by topic name."""
    from pydoc_data.topics import topics  # noqa: PLC0415

    return [topics[name] for name in sorted(topics) if topics[name].strip()]


@dataclass
class PythonHelpInput(Input):
    type: str = "python-help"

    @staticmethod
    def documents(settings: dict) -> Iterator[str]:
        return iter(python_help_topics())

    @staticmethod
    def total_bytes(settings: dict) -> int:
        return sum(len(t.encode("utf-8")) for t in python_help_topics())

"""``input=text``: plain-text files, one document per line or per paragraph (lines up to a blank line)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from omegaconf import MISSING

from .base import Input
from .files import expand_paths, read_lines, total_file_bytes

SEPARATORS = ("line", "blank_line")


@dataclass
class TextInput(Input):
    type: str = "text"
    paths: list = MISSING
    doc_separator: str = MISSING  # line | blank_line

    @staticmethod
    def documents(settings: dict) -> Iterator[str]:
        return _documents(expand_paths(settings.get("paths")), settings.get("doc_separator", "line"))

    total_bytes = staticmethod(total_file_bytes)


def _documents(files, separator: str) -> Iterator[str]:
    if separator not in SEPARATORS:
        raise ValueError(f"input.doc_separator must be 'line' or 'blank_line', got {separator!r}")
    for file in files:
        paragraph = []
        for _, line in read_lines(file):
            line = line.rstrip("\n")
            if separator == "line":
                if line.strip():
                    yield line
            elif line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "\n".join(paragraph)
                paragraph = []
        if paragraph:
            yield "\n".join(paragraph)

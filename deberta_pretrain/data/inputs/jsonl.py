"""``input=jsonl``: JSON-lines files, one record per line with the document in ``text_field``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

from .base import RecordFilesInput, text_field
from .files import read_lines, total_file_bytes


def _documents(files, field: str) -> Iterator[str]:
    for file in files:
        for number, line in read_lines(file):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}:{number}: not JSON: {e}") from e
            text = text_field(record, field, f"{file}:{number}")
            if text.strip():
                yield text


@dataclass
class JsonlInput(RecordFilesInput):
    type: str = "jsonl"
    read = staticmethod(_documents)
    total_bytes = staticmethod(total_file_bytes)

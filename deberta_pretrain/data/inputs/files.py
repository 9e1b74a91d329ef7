"""Files of an input (``input.paths``): globs expanded in a fixed order, local files and objects in storage
(``s3://bucket/corpus/*.jsonl``, read through fsspec) opened alike, text read line by line."""

from __future__ import annotations

import glob
import os
from typing import Iterator

from ... import remote


def expand_paths(patterns) -> list[str]:
    """Sorted files matching the glob ``patterns``; a pattern that matches nothing is an error naming it."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError("input.paths is empty: give files or globs, e.g. input.paths='[corpus/*.txt]'")
    files = []
    for pattern in patterns:
        if remote.is_remote(pattern):
            fs, path = remote.filesystem(pattern)
            protocol = pattern.split("://", 1)[0]
            matches = sorted(f"{protocol}://{p}" for p in fs.glob(path) if fs.isfile(p))
        else:
            matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f"input.paths: no file matches {pattern!r}")
        files.extend(matches)
    return files


def open_binary(file: str):
    """A local file or an object in storage, opened for reading bytes."""
    if remote.is_remote(file):
        fs, path = remote.filesystem(file)
        return fs.open(path, "rb")
    return open(file, "rb")


def file_size(file: str) -> int:
    return remote.size(file) or 0 if remote.is_remote(file) else os.path.getsize(file)


def total_file_bytes(settings: dict) -> int:
    """Bytes of the files ``settings["paths"]`` names."""
    return sum(file_size(p) for p in expand_paths(settings.get("paths")))


def read_lines(file: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, with line ends as text mode gives them ("\r\n" and "\r" end a
    line as "\n" does). Each line is decoded on its own (a text-mode file decodes in blocks), so text that is not
    UTF-8 is named by its line."""
    with open_binary(file) as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{file}: line {number} is not UTF-8 text ({e.reason}: {raw[e.start:e.end]!r}); "
                                 f"convert the file first, e.g. with iconv -t utf-8") from None
            *ended, rest = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            for line in ended:
                yield number, line + "\n"
            if rest:
                yield number, rest

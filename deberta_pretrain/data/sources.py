"""Document sources for data prep: each yields documents (strings) in a fixed order, one at a time, so a corpus
larger than memory streams through.

* ``text``: files matching ``paths`` (globs, sorted); ``doc_separator`` ``line`` (one document per line) or
  ``blank_line`` (paragraphs separated by empty lines).
* ``jsonl``: one JSON record per line, the document in ``text_field``.
* ``parquet``: the column ``text_field``, read one row group at a time.
* ``hf``: a ``datasets`` corpus (``name``, ``config_name``, ``split``), streamed by default.
* ``python-help``: the English help topics that ship with CPython (``pydoc_data.topics``), on every machine.

``paths`` may name files and globs in object storage too (``s3://bucket/corpus/*.jsonl``), read through fsspec.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Iterator

from .. import remote

SOURCE_TYPES = ("text", "jsonl", "parquet", "hf", "python-help")


def expand_paths(patterns) -> list[str]:
    """Sorted files matching the glob ``patterns``; a pattern that matches nothing is an error naming it."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError("source.paths is empty: give files or globs, e.g. source.paths='[corpus/*.txt]'")
    files = []
    for pattern in patterns:
        if remote.is_remote(pattern):
            fs, path = remote.filesystem(pattern)
            protocol = pattern.split("://", 1)[0]
            matches = sorted(f"{protocol}://{p}" for p in fs.glob(path) if fs.isfile(p))
        else:
            matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f"source.paths: no file matches {pattern!r}")
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


def _text_documents(files, separator: str) -> Iterator[str]:
    if separator not in ("line", "blank_line"):
        raise ValueError(f"source.doc_separator must be 'line' or 'blank_line', got {separator!r}")
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


def _field(record, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        raise ValueError(f"{where}: no field {field!r} (set source.text_field)")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} is {type(value).__name__}, not text")
    return value


def _jsonl_documents(files, field: str) -> Iterator[str]:
    for file in files:
        for number, line in read_lines(file):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}:{number}: not JSON: {e}") from e
            text = _field(record, field, f"{file}:{number}")
            if text.strip():
                yield text


def _parquet_documents(files, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # noqa: PLC0415 (comes with datasets)

    for file in files:
        reader = pq.ParquetFile(open_binary(file))
        if field not in reader.schema_arrow.names:
            raise ValueError(f"{file}: no column {field!r} (columns: {', '.join(reader.schema_arrow.names)}; "
                             f"set source.text_field)")
        for group in range(reader.num_row_groups):
            for text in reader.read_row_group(group, columns=[field]).column(field).to_pylist():
                if text and text.strip():
                    yield text


def _hf_documents(source: dict) -> Iterator[str]:
    """Opens the corpus now (so that an unreachable or unknown corpus fails before anything is written) and
    returns an iterator over its documents."""
    import datasets  # noqa: PLC0415

    name = source.get("name")
    if not name:
        raise ValueError("source.name: give a datasets corpus name, e.g. source.name=wikitext")
    try:
        corpus = datasets.load_dataset(name, source.get("config_name"), split=source.get("split", "train"),
                                       streaming=bool(source.get("streaming", True)))
    except (ConnectionError, FileNotFoundError, ValueError) as e:  # offline, unknown name, config or split
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"source=hf: cannot load the datasets corpus {name!r} (config {source.get('config_name')!r}"
                         f", split {source.get('split', 'train')!r}): {first_line}. Without network, get the files "
                         f"elsewhere and use source=jsonl, source=parquet or source=text on them") from e
    field = source.get("text_field", "text")
    return (text for number, record in enumerate(corpus)
            if (text := _field(record, field, f"{name} record {number}")).strip())


def python_help_topics() -> list[str]:
    """CPython's help topics (``help('FORMATTING')`` etc.), sorted by topic name."""
    from pydoc_data.topics import topics  # noqa: PLC0415

    return [topics[name] for name in sorted(topics) if topics[name].strip()]


def iter_documents(source: dict) -> Iterator[str]:
    """The documents of the source described by ``source`` (the ``source`` group of the data-prep config)."""
    kind = source.get("type")
    if kind == "text":
        return _text_documents(expand_paths(source.get("paths")), source.get("doc_separator", "line"))
    if kind == "jsonl":
        return _jsonl_documents(expand_paths(source.get("paths")), source.get("text_field", "text"))
    if kind == "parquet":
        return _parquet_documents(expand_paths(source.get("paths")), source.get("text_field", "text"))
    if kind == "hf":
        return _hf_documents(source)
    if kind == "python-help":
        return iter(python_help_topics())
    raise ValueError(f"source.type must be one of {SOURCE_TYPES}, got {kind!r}")


def total_bytes(source: dict) -> int | None:
    """Size of the source in bytes for the progress bar (None when unknown: a streamed corpus, compressed parquet)."""
    kind = source.get("type")
    if kind in ("text", "jsonl"):
        return sum(file_size(p) for p in expand_paths(source.get("paths")))
    if kind == "python-help":
        return sum(len(t.encode("utf-8")) for t in python_help_topics())
    return None

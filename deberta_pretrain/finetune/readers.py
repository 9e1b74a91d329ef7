"""Reading a task's files: CSV, TSV, JSON (lines) and parquet, each record with the file and row it comes from.

CSV, TSV and JSON lines are parsed here rather than by ``datasets``: its errors are tracebacks that name no line."""

from __future__ import annotations

import csv
import io
import json
import os

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv", ".tsv")


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

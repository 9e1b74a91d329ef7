"""``input=parquet``: Parquet files, the documents in the column ``text_field``, read one row group at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from .base import RecordFilesInput
from .files import open_binary


def _documents(files, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # noqa: PLC0415 (comes with datasets)

    for file in files:
        reader = pq.ParquetFile(open_binary(file))
        if field not in reader.schema_arrow.names:
            raise ValueError(f"{file}: no column {field!r} (columns: {', '.join(reader.schema_arrow.names)}; "
                             f"set input.text_field)")
        for group in range(reader.num_row_groups):
            for text in reader.read_row_group(group, columns=[field]).column(field).to_pylist():
                if text and text.strip():
                    yield text


@dataclass
class ParquetInput(RecordFilesInput):
    type: str = "parquet"
    read = staticmethod(_documents)  # total_bytes: unknown (the files are compressed)

"""What every input type provides: its settings' schema and its documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from omegaconf import MISSING

from .files import expand_paths


class Input:
    """Base class of the input types. A subclass is a dataclass whose fields are the schema of
    ``conf/data_prep/input/<type>.yaml`` (types only, the values come from the YAML; the ``type`` field's default is
    the name the type is registered under) and whose static methods read a configured input: ``settings`` is the
    ``input`` mapping of the data-prep config, a key it lacks takes the YAML's default."""

    @staticmethod
    def documents(settings: dict) -> Iterator[str]:
        """The documents (non-blank strings) in a fixed order, one at a time, so an input larger than memory streams
        through. Settings that cannot work (no file matches, an unknown corpus) fail here, before anything is
        written."""
        raise NotImplementedError

    @staticmethod
    def total_bytes(settings: dict) -> int | None:
        """The input's size in bytes for the progress bar and the vocabulary's sample; None when unknown."""
        return None


def text_field(record, field: str, where: str) -> str:
    """The text in ``field`` of a record (a JSON object, a ``datasets`` row); ``where`` names the record."""
    if not isinstance(record, dict) or field not in record:
        raise ValueError(f"{where}: no field {field!r} (set input.text_field)")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} is {type(value).__name__}, not text")
    return value


@dataclass
class RecordFilesInput(Input):
    """Files (``paths``) of records with the document in the field ``text_field``; a subclass sets ``type`` and
    ``read(files, field)``, which yields the documents."""

    type: str = MISSING
    paths: list = MISSING
    text_field: str = MISSING

    @classmethod
    def documents(cls, settings: dict) -> Iterator[str]:
        return cls.read(expand_paths(settings.get("paths")), settings.get("text_field", "text"))

    @staticmethod
    def read(files: list[str], field: str) -> Iterator[str]:
        raise NotImplementedError

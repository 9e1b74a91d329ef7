"""``input=hf``: a Hugging Face ``datasets`` corpus (``name``, ``config_name``, ``split``), streamed by default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from omegaconf import MISSING

from .base import Input, text_field


@dataclass
class HFInput(Input):
    type: str = "hf"
    name: str = MISSING
    config_name: Optional[str] = MISSING
    split: str = MISSING
    text_field: str = MISSING
    streaming: bool = MISSING

    @staticmethod
    def documents(settings: dict) -> Iterator[str]:
        """Opens the corpus now (so that an unreachable or unknown corpus fails before anything is written) and
        returns an iterator over its documents."""
        import datasets  # noqa: PLC0415

        name = settings.get("name")
        if not name:
            raise ValueError("input.name: give a datasets corpus name, e.g. input.name=wikitext")
        split = settings.get("split", "train")
        try:
            corpus = datasets.load_dataset(name, settings.get("config_name"), split=split,
                                           streaming=bool(settings.get("streaming", True)))
        except (ConnectionError, FileNotFoundError, ValueError) as e:  # offline, unknown name, config or split
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"input=hf: cannot load the datasets corpus {name!r} (config "
                             f"{settings.get('config_name')!r}, split {split!r}): {first_line}. Without network, get "
                             f"the files elsewhere and use input=jsonl, input=parquet or input=text on them") from e
        field = settings.get("text_field", "text")
        return (text for number, record in enumerate(corpus)
                if (text := text_field(record, field, f"{name} record {number}")).strip())

    # total_bytes: unknown (a streamed corpus)

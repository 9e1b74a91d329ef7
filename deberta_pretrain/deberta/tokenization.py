"""What both tokenizers (GPT-2 BPE and SentencePiece) derive the same way from their vocabulary."""

from __future__ import annotations

import operator

import numpy as np


def lookup(table: list[str], ids) -> list[str]:
    """``[table[i] for i in ids]``, in C (``operator.itemgetter``): ``tokenize()`` spends most of its time here."""
    if len(ids) < 2:
        return [table[i] for i in ids]
    return list(operator.itemgetter(*ids)(table))


class TokenizerMixin:
    """Needs ``tokens_by_id`` (every token string in id order), ``decode``, ``convert_ids_to_tokens``,
    ``part_of_whole_word`` and the ``*_token_id`` attributes."""

    def decode_ids(self, ids) -> str:
        """Model ids -> text (special tokens skipped)."""
        return self.decode(self.convert_ids_to_tokens(ids))

    def word_continuation_table(self) -> np.ndarray:
        """``table[id]`` is True when token ``id`` continues the previous word (see ``part_of_whole_word``)."""
        return np.array([self.part_of_whole_word(t) for t in self.tokens_by_id], dtype=bool)

    def special_ids(self) -> dict:
        return {"pad": self.pad_token_id, "cls": self.cls_token_id, "sep": self.sep_token_id,
                "unk": self.unk_token_id, "mask": self.mask_token_id}

"""Packing tokenized documents into fixed-length ``[CLS] ... [SEP]`` blocks.

* ``continuous``: the documents are joined into one stream with a ``[SEP]`` between neighbours and cut into pieces
  of ``length - 2`` tokens; every block is ``[CLS] piece [SEP]``, only the last one is padded. No token is wasted.
* ``document``: every document starts a new block (a long one continues over several); short documents are padded.
"""

from __future__ import annotations

import numpy as np

PACKING_MODES = ("continuous", "document")


def _blocks_from_stream(stream: np.ndarray, length: int, cls_id: int, sep_id: int, pad_id: int) -> np.ndarray:
    """``[CLS] piece [SEP]`` rows of ``stream`` cut into pieces of ``length - 2`` (vectorised: no loop per block)."""
    body = length - 2
    n = -(-len(stream) // body)
    blocks = np.full((n, length), pad_id, dtype=np.int64)
    blocks[:, 0] = cls_id
    pieces = np.full(n * body, pad_id, dtype=np.int64)
    pieces[:len(stream)] = stream
    blocks[:, 1:1 + body] = pieces.reshape(n, body)
    blocks[:-1, -1] = sep_id
    blocks[-1, 1 + len(stream) - (n - 1) * body] = sep_id
    return blocks


def pack_documents(documents: list[np.ndarray], length: int, cls_id: int, sep_id: int, pad_id: int,
                   mode: str = "continuous") -> np.ndarray:
    """Token-id arrays (no special tokens) -> an int64 array ``[num_blocks, length]``; empty documents are skipped."""
    if mode not in PACKING_MODES:
        raise ValueError(f"packing must be one of {PACKING_MODES}, got {mode!r}")
    if length < 3:
        raise ValueError(f"max_seq_length must be >= 3 ([CLS], a token, [SEP]), got {length}")
    documents = [np.asarray(d, dtype=np.int64) for d in documents if len(d)]
    if not documents:
        return np.zeros((0, length), dtype=np.int64)
    if mode == "document":
        return np.concatenate([_blocks_from_stream(d, length, cls_id, sep_id, pad_id) for d in documents])
    separator = np.array([sep_id], dtype=np.int64)
    stream = np.concatenate([part for d in documents for part in (separator, d)][1:])
    return _blocks_from_stream(stream, length, cls_id, sep_id, pad_id)

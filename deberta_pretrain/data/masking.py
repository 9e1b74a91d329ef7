"""MLM masking and collation, with the rates and caps of upstream's ``NGramMaskGenerator``.

Per block: the candidates are all non-special positions; ``round(mask_prob * candidates)`` of them (at least one,
at most ``max_predictions``) are predicted. Of the predicted positions 80 % become ``[MASK]``, 10 % a random token
and 10 % stay unchanged. Three ways to choose them:

* ``token``: positions chosen uniformly;
* ``whole_word``: BPE pieces are grouped into words (a piece that continues a word joins the previous one) and whole
  words are chosen;
* ``span``: n-grams of whole words, n in [1, max_ngram] with p(n) proportional to 1/n (upstream's ``max_gram``).

With ``document_attention`` (for blocks packed from several documents joined by ``[SEP]``), the batch carries
``document_ids`` (the model attends only within a document) and ``position_ids`` that restart at every document,
so a packed document is encoded as if it were alone in its row (relative positions within a document do not
depend on where it sits) and packing wastes no compute on padding. A document runs up to and including its
``[SEP]``; the block's ``[CLS]`` belongs to the first one. Both are [B, L]: no L x L mask leaves the collator.

The random generator of block ``i`` in epoch ``e`` is seeded with ``(seed, e, i)``: masks do not depend on the
world size, the batch a block lands in, or restarts. One deviation from upstream: random replacement tokens are
drawn from the non-special ids only (upstream may put ``[CLS]`` or ``[PAD]`` inside a sentence).
"""

from __future__ import annotations

import math

import numpy as np
import torch

IGNORE_INDEX = -100  # label of positions that are not predicted (cross-entropy's ignore index)
MASKING_MODES = ("token", "whole_word", "span")


def default_max_predictions(length: int, mask_prob: float = 0.15) -> int:
    """Upstream's cap on predictions per sequence: ``ceil(length * mask_prob / 10) * 10`` (80 at 512)."""
    return int(math.ceil(length * mask_prob / 10) * 10)


class MLMCollator:
    """Masks blocks and stacks them into a batch.

    Args:
        vocab_size, mask_id, pad_id: the vocabulary; ``special_ids`` are never predicted nor used as replacements.
        seed: the run's seed (with the sample's key it seeds each block's masks).
        masking: ``token``, ``whole_word`` or ``span``.
        max_predictions: cap per block; ``None`` uses :func:`default_max_predictions` of the block length.
        continuation: boolean table over ids, True where a token continues the previous word (needed for
            ``whole_word`` and ``span``; see ``GPT2Tokenizer.word_continuation_table``).

    Calling it on ``[(key, block), ...]`` (``key``: a tuple of ints naming the sample, ``(epoch, index)`` and for a
    source of a mixture its stream key too, so its masks do not depend on where or when it is read) returns
    ``input_ids``, ``input_mask`` and ``labels`` (original id at predicted positions, :data:`IGNORE_INDEX`
    elsewhere) as int64 tensors; with ``document_attention`` (needs ``sep_id``) also ``document_ids`` and
    ``position_ids`` (int64 ``[B, L]``).
    """

    def __init__(self, vocab_size: int, mask_id: int, pad_id: int, special_ids, seed: int, masking: str = "token",
                 mask_prob: float = 0.15, max_predictions: int | None = None, mask_token_prob: float = 0.8,
                 random_token_prob: float = 0.1, max_ngram: int = 3, continuation=None,
                 document_attention: bool = False, sep_id: int | None = None):
        if masking not in MASKING_MODES:
            raise ValueError(f"masking must be one of {MASKING_MODES}, got {masking!r}")
        if masking != "token" and continuation is None:
            raise ValueError(f"masking={masking!r} needs the word-continuation table of the vocabulary")
        if document_attention and sep_id is None:
            raise ValueError("document_attention needs sep_id, the separator between packed documents")
        self.mask_id, self.pad_id, self.seed, self.masking = mask_id, pad_id, seed, masking
        self.document_attention, self.sep_id = document_attention, sep_id
        self.mask_prob, self.max_predictions = mask_prob, max_predictions
        self.mask_token_prob, self.random_token_prob = mask_token_prob, random_token_prob
        self.max_ngram = max(1, int(max_ngram)) if masking == "span" else 1
        self.special = np.zeros(vocab_size, dtype=bool)
        self.special[list(special_ids)] = True
        self.replacements = np.nonzero(~self.special)[0]
        self.continuation = None if continuation is None else np.asarray(continuation, dtype=bool)
        weights = 1.0 / np.arange(1, self.max_ngram + 1)
        self.ngram_probs = weights / weights.sum()

    def _words(self, ids: np.ndarray, candidates: np.ndarray) -> list[np.ndarray]:
        """Candidate positions grouped into words (token masking: every position is a word)."""
        if self.masking == "token":
            return [candidates[i:i + 1] for i in range(len(candidates))]
        starts = ~self.continuation[ids[candidates]]
        starts[0] = True
        starts[1:] |= np.diff(candidates) != 1  # a special token between two pieces ends the word
        return np.split(candidates, np.nonzero(starts)[0][1:])

    def choose(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Positions of ``ids`` to predict (sorted)."""
        candidates = np.nonzero(~self.special[ids])[0]
        if len(candidates) == 0:
            return candidates
        cap = self.max_predictions or default_max_predictions(len(ids), self.mask_prob)
        target = min(cap, max(1, int(round(len(candidates) * self.mask_prob))))
        words = self._words(ids, candidates)
        chosen, count = np.zeros(len(words), dtype=bool), 0
        lengths = rng.choice(self.max_ngram, size=len(words), p=self.ngram_probs) + 1
        for start, n in zip(rng.permutation(len(words)), lengths):
            if count >= target:
                break
            span = range(start, min(start + int(n), len(words)))
            size = sum(len(words[w]) for w in span if not chosen[w])
            if size == 0 or count + size > target:
                continue  # as upstream: never exceed the target; try another start
            for w in span:
                chosen[w] = True
            count += size
        if not chosen.any():
            return np.sort(rng.choice(candidates, size=target, replace=False))  # every word longer than target
        return np.concatenate([words[w] for w in np.nonzero(chosen)[0]])

    def mask(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One block -> (input ids, labels)."""
        positions = self.choose(ids, rng)
        inputs, labels = ids.copy(), np.full_like(ids, IGNORE_INDEX)
        labels[positions] = ids[positions]
        action = rng.random(len(positions))
        to_mask = positions[action < self.mask_token_prob]
        to_random = positions[(action >= self.mask_token_prob)
                              & (action < self.mask_token_prob + self.random_token_prob)]
        inputs[to_mask] = self.mask_id
        inputs[to_random] = rng.choice(self.replacements, size=len(to_random))
        return inputs, labels

    def __call__(self, items) -> dict[str, torch.Tensor]:
        inputs, labels, masks = [], [], []
        for key, block in items:
            ids = np.asarray(block, dtype=np.int64)
            rng = np.random.default_rng([self.seed, *key])
            block_inputs, block_labels = self.mask(ids, rng)
            inputs.append(block_inputs)
            labels.append(block_labels)
            masks.append(ids != self.pad_id)
        batch = {"input_ids": torch.from_numpy(np.stack(inputs)),
                 "input_mask": torch.from_numpy(np.stack(masks).astype(np.int64)),
                 "labels": torch.from_numpy(np.stack(labels))}
        if self.document_attention:
            originals = np.stack([np.asarray(block, dtype=np.int64) for _, block in items])
            documents, positions = document_ids(originals, self.sep_id)
            batch.update(document_ids=torch.from_numpy(documents), position_ids=torch.from_numpy(positions))
        return batch


def document_ids(ids: np.ndarray, sep_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Document ids and per-document positions, both ``[B, L]`` int64, of packed blocks: a document runs up to and
    including its ``[SEP]`` (the block's ``[CLS]`` belongs to the first one); ids count documents from 0 in each
    row (padding after the last ``[SEP]`` gets the next id: it is masked anyway)."""
    is_sep = ids == sep_id
    document = np.cumsum(is_sep, axis=1) - is_sep
    columns = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    starts = np.ones_like(is_sep)
    starts[:, 1:] = document[:, 1:] != document[:, :-1]
    first = np.maximum.accumulate(np.where(starts, columns, 0), axis=1)
    return document.astype(np.int64), (columns - first).astype(np.int64)

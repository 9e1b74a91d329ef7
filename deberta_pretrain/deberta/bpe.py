"""GPT-2 byte-level BPE, two engines with identical output.

* :class:`ReferenceBPE`: the algorithm in plain Python (``regex`` pre-tokenisation with the GPT-2 pattern, then
  repeated merging of the lowest-ranked adjacent pair). Readable, slow; the definition the fast engine is tested
  against.
* :class:`TiktokenBPE`: the same vocabulary handed to ``tiktoken``'s Rust BPE, which is several times faster and
  multi-threaded for batches. Used for data prep when ``tiktoken`` is installed and the vocabulary's merge order
  equals its id order (true for GPT-2: token id = 256 + merge index), which makes rank-based merging identical.

Both map text to GPT-2 ids (0..50256) and back.
"""

from __future__ import annotations

import functools
import logging

import regex

logger = logging.getLogger(__name__)

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENGINES = ("auto", "tiktoken", "reference")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters: printable Latin-1 bytes map
    to themselves, the rest to code points from 256 upwards, in byte order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class ReferenceBPE:
    """Pure-Python GPT-2 BPE over ``encoder`` (token string -> id) and ``merges`` (list of symbol pairs)."""

    name = "reference"

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]):
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.bpe_ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.pattern = regex.compile(GPT2_PATTERN)
        self.cache: dict[str, list[int]] = {}

    def _bpe(self, word: str) -> list[str]:
        symbols = list(word)
        while len(symbols) > 1:
            pairs = [(self.bpe_ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
            rank, best = min(pairs)
            if rank == float("inf"):
                break
            first, second = symbols[best], symbols[best + 1]
            merged, i = [], 0
            while i < len(symbols):  # merge every occurrence of the best pair, left to right
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            cached = self.cache.get(piece)
            if cached is None:
                word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                cached = [self.encoder[s] for s in self._bpe(word)]
                if len(self.cache) < 100_000:
                    self.cache[piece] = cached
            ids.extend(cached)
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


def merges_follow_ids(encoder: dict[str, int], merges: list[tuple[str, str]]) -> bool:
    """True when merge i creates token id 256 + i and the 256 single bytes have ids 0..255 (GPT-2's layout):
    then merging by token rank (tiktoken) equals merging by merge rank (GPT-2)."""
    byte_ids = {encoder.get(c) for c in bytes_to_unicode().values()}
    if byte_ids != set(range(256)):
        return False
    return all(encoder.get(a + b) == 256 + i for i, (a, b) in enumerate(merges))


class TiktokenBPE:
    """GPT-2 BPE through tiktoken, built from the vocabulary's ranks (no download)."""

    name = "tiktoken"

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]], special: str = "<|endoftext|>"):
        import tiktoken  # noqa: PLC0415 (optional dependency)

        byte_decoder = {v: k for k, v in bytes_to_unicode().items()}
        ranks = {bytes(byte_decoder[c] for c in token): rank for token, rank in encoder.items() if token != special}
        specials = {special: encoder[special]} if special in encoder else {}
        self.encoding = tiktoken.Encoding(name="deberta_gpt2_bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                          special_tokens=specials, explicit_n_vocab=len(encoder))
        self.reference = ReferenceBPE(encoder, merges)  # for decoding ids tiktoken does not know

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        return self.reference.decode(ids)


def make_engine(encoder: dict[str, int], merges: list[tuple[str, str]], engine: str = "auto"):
    """Build the BPE engine: ``auto`` prefers tiktoken when installed and applicable, else the reference."""
    if engine not in ENGINES:
        raise ValueError(f"engine: unknown BPE engine {engine!r}; allowed: {ENGINES}")
    if engine == "reference":
        return ReferenceBPE(encoder, merges)
    applicable = merges_follow_ids(encoder, merges)
    try:
        import tiktoken  # noqa: F401, PLC0415
    except ImportError:
        if engine == "tiktoken":
            raise ImportError("engine=tiktoken needs the tiktoken package: pip install tiktoken") from None
        return ReferenceBPE(encoder, merges)
    if not applicable:
        if engine == "tiktoken":
            raise ValueError("engine=tiktoken: this vocabulary's merge order differs from its id order, so tiktoken "
                             "would tokenize differently; use engine=reference")
        logger.warning("BPE vocabulary merge order differs from id order: using the (slower) reference engine")
        return ReferenceBPE(encoder, merges)
    return TiktokenBPE(encoder, merges)

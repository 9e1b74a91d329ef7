"""``GPT2Tokenizer``: the GPT-2 byte-level BPE with DeBERTa's v1 vocabulary and special tokens (seed API).

Tokens are GPT-2 ids written as strings (``"Hello world!"`` -> ``['15496', '995', '0']``); model ids come from the
``dict_map`` of the vocabulary file: ``[PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3``, then the ``dict_map`` entries in
order, then ``[MASK]`` (50264 with the release dictionary).
"""

from __future__ import annotations

import os
import unicodedata

import numpy as np

from . import gpt2_vocab
from .bpe import make_engine
from .tokenization import TokenizerMixin, lookup

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")


def _is_whitespace_control_or_punctuation(ch: str) -> bool:
    if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
        return True
    if unicodedata.category(ch).startswith("C"):
        return True
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class GPT2Tokenizer(TokenizerMixin):
    """A wrapper of the GPT-2 tokenizer with a BERT-like interface.

    Args:
        vocab_file: a ``bpe_encoder.bin`` (see :mod:`deberta_pretrain.deberta.gpt2_vocab`) or a release name. Without
            it the vocabulary is built from OpenAI's GPT-2 files in GPT-2 id order (ids differ from Microsoft's).
        do_lower_case: accepted for API compatibility; GPT-2 BPE is case-sensitive and ignores it.
        special_tokens: extra special tokens appended to the vocabulary.
        engine: BPE engine, ``auto`` (tiktoken when available), ``tiktoken`` or ``reference``.
    """

    def __init__(self, vocab_file=None, do_lower_case=True, special_tokens=None, engine: str = "auto"):
        if vocab_file is None:
            self.gpt2_encoder = gpt2_vocab.build_bpe_encoder()
        else:
            if not os.path.exists(os.fspath(vocab_file)):
                from .release import resolve_vocab_path  # noqa: PLC0415

                vocab_file = resolve_vocab_path(vocab_file, kind="gpt2")
            self.gpt2_encoder = gpt2_vocab.load_bpe_encoder(vocab_file)
        self.pad_token, self.cls_token, self.sep_token, self.unk_token = SPECIAL_TOKENS
        self.mask_token = "[MASK]"
        self.symbols: list[str] = []
        self.count: list[int] = []
        self.indices: dict[str, int] = {}
        self.pad_token_id = self.add_symbol(self.pad_token)
        self.cls_token_id = self.add_symbol(self.cls_token)
        self.sep_token_id = self.add_symbol(self.sep_token)
        self.unk_token_id = self.add_symbol(self.unk_token)
        for word, n in self.gpt2_encoder["dict_map"]:
            self.add_symbol(word, n)
        self.mask_token_id = self.mask_id = self.add_symbol(self.mask_token)
        self.special_tokens = ["[MASK]", "[SEP]", "[PAD]", "[UNK]", "[CLS]"]
        for token in special_tokens or []:
            self.add_special_token(token)
        encoder = self.gpt2_encoder["encoder"]
        merges = [tuple(pair) for pair in self.gpt2_encoder["vocab"]]
        self.bpe = make_engine(encoder, merges, engine)
        self._gpt2_to_id = self._build_gpt2_lookup(len(encoder))
        self._id_strings = [str(i) for i in range(len(encoder))]  # tokenize() looks strings up, faster than str()
        self.vocab = self.indices
        self.ids_to_tokens = self.symbols

    def _build_gpt2_lookup(self, n_gpt2: int) -> np.ndarray:
        """GPT-2 id -> model id ([UNK] for GPT-2 ids missing from ``dict_map``), for fast batch conversion."""
        table = np.full(n_gpt2, self.unk_token_id, dtype=np.int64)
        for gpt2_id in range(n_gpt2):
            model_id = self.indices.get(str(gpt2_id))
            if model_id is not None:
                table[gpt2_id] = model_id
        return table

    # ---- the seed API ---------------------------------------------------------------------------------
    @property
    def dict_source(self) -> str:
        return self.gpt2_encoder.get("dict_source", "unknown")

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def tokenize(self, text: str) -> list[str]:
        """Text -> GPT-2 byte-level BPE tokens, each the string of its GPT-2 id."""
        return lookup(self._id_strings, self.bpe.encode(text))

    def convert_tokens_to_ids(self, tokens) -> list[int]:
        return [self.indices.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.symbols[int(i)] for i in ids]

    def decode(self, tokens) -> str:
        """Tokens (GPT-2 id strings) -> text; special tokens and fillers are skipped."""
        return self.bpe.decode([int(t) for t in tokens if t not in self.special_tokens and str(t).isdigit()])

    def add_special_token(self, token: str) -> int:
        """Add a special token (kept out of decoding); returns its id."""
        self.special_tokens.append(token)
        return self.add_symbol(token)

    def add_symbol(self, word: str, n: int = 1) -> int:
        """Add ``word`` with frequency ``n`` (or add ``n`` to its count); returns its id."""
        if word in self.indices:
            idx = self.indices[word]
            self.count[idx] += n
            return idx
        idx = len(self.symbols)
        self.indices[word] = idx
        self.symbols.append(word)
        self.count.append(n)
        return idx

    def part_of_whole_word(self, token: str, is_bos: bool = False) -> bool:
        """True when ``token`` continues the previous token's word (it does not start with a space and is not a
        lone whitespace/punctuation/control character); used by whole-word masking."""
        if is_bos:
            return True
        if token in self.special_tokens or not str(token).isdigit():
            return False
        s = self.bpe.decode([int(token)])
        if len(s) == 1 and _is_whitespace_control_or_punctuation(s):
            return False
        return not s.startswith(" ")

    def sym(self, id: int) -> str:  # noqa: A002 (upstream name)
        return self.symbols[id]

    def id(self, sym: str) -> int:
        return self.indices[sym]

    # ---- fast paths for data prep and masking --------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Text -> model ids (no [CLS]/[SEP])."""
        return self._gpt2_to_id[np.asarray(self.bpe.encode(text), dtype=np.int64)].tolist()

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[np.ndarray]:
        """Texts -> model ids, one int64 array per text."""
        if hasattr(self.bpe, "encoding"):
            batches = self.bpe.encode_batch(texts, num_threads=num_threads)
        else:
            batches = self.bpe.encode_batch(texts)
        return [self._gpt2_to_id[np.asarray(ids, dtype=np.int64)] for ids in batches]

    @property
    def tokens_by_id(self) -> list[str]:
        return self.symbols

    def save_pretrained(self, path) -> str:
        """Write the vocabulary as ``bpe_encoder.bin`` (``path`` may be a directory); returns the file path."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "bpe_encoder.bin")
        gpt2_vocab.save_bpe_encoder(self.gpt2_encoder, path)
        return path

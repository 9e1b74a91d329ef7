"""``SPMTokenizer``: DeBERTa v2/v3's SentencePiece tokenizer, with upstream's name, signature and ids.

The ids are the SentencePiece model's own, then the special tokens that are not pieces of the model, in upstream's
order ``[MASK] [SEP] [PAD] [UNK] [CLS]``, each at the next free id. With the v3 releases' ``spm.model``, whose first
pieces are ``[PAD] [CLS] [SEP] [UNK]`` and which has 128,000 pieces, only ``[MASK]`` is added, at 128000; the
models reserve 128,100 embedding rows.

Two places where upstream's code has a slip follow Hugging Face's ``DebertaV2Tokenizer`` instead: a string that is
not in the vocabulary maps to ``[UNK]`` (upstream: id 1, which is ``[CLS]`` in v3), and ``convert_ids_to_tokens``
works (upstream's refers to a missing attribute). ``do_lower_case`` lowercases the text first, as HF's does
(upstream accepts and ignores it; the v3 releases use ``False``).
"""

from __future__ import annotations

import os
import shutil
import unicodedata

import numpy as np

from .tokenization import TokenizerMixin, lookup

SPECIAL_TOKENS = ("[MASK]", "[SEP]", "[PAD]", "[UNK]", "[CLS]")  # upstream's order of adding them
WORD_START = "\u2581"  # SentencePiece's marker of a piece that starts a word


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_whitespace_or_control(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) in ("Zs", "Cc", "Cf")


class SPMTokenizer(TokenizerMixin):
    """A SentencePiece tokenizer with a BERT-like interface.

    Args:
        vocab_file: a SentencePiece model file (``spm.model``).
        do_lower_case: lowercase the text before encoding.
        special_tokens: extra special tokens, added after upstream's five.
        bpe_dropout: accepted for upstream compatibility (unused, as upstream).
        split_by_punct: encode the text between punctuation marks separately, each mark a piece of its own.
    """

    def __init__(self, vocab_file, do_lower_case=False, special_tokens=None, bpe_dropout=0, split_by_punct=False):
        import sentencepiece  # noqa: PLC0415

        self.vocab_file = os.fspath(vocab_file)
        if not os.path.isfile(self.vocab_file):
            raise FileNotFoundError(f"vocab_file: {self.vocab_file} does not exist (a SentencePiece spm.model)")
        self.spm = sentencepiece.SentencePieceProcessor()
        try:
            self.spm.load(self.vocab_file)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{self.vocab_file}: not a SentencePiece model ({e})") from e
        self.do_lower_case, self.split_by_punct, self.bpe_dropout = do_lower_case, split_by_punct, bpe_dropout
        self.vocab = {self.spm.id_to_piece(i): i for i in range(self.spm.get_piece_size())}
        self.pieces = len(self.vocab)
        self.special_tokens: list[str] = []
        for token in (*SPECIAL_TOKENS, *(special_tokens or ())):
            self.add_special_token(token)
        self.pad_token, self.cls_token, self.sep_token, self.unk_token, self.mask_token = (
            "[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
        self.pad_token_id, self.cls_token_id, self.sep_token_id, self.unk_token_id, self.mask_token_id = (
            self.vocab[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"))
        # the token of every piece id, the model's unknown piece spelt [UNK]: tokenize() maps ids through it
        self._piece_tokens = list(self.tokens_by_id[:self.pieces])
        self._piece_tokens[self.spm.unk_id()] = self.unk_token

    def add_special_token(self, token: str) -> int:
        """Add a special token (kept out of decoding) at the next free id unless the model has it; returns its id."""
        if token not in self.special_tokens:
            self.special_tokens.append(token)
        if token not in self.vocab:
            self.vocab[token] = len(self.vocab)
            self.ids_to_tokens = None
        return self.vocab[token]

    @property
    def tokens_by_id(self) -> list[str]:
        if getattr(self, "ids_to_tokens", None) is None:
            self.ids_to_tokens = [t for t, _ in sorted(self.vocab.items(), key=lambda kv: kv[1])]
        return self.ids_to_tokens

    id_to_tokens = tokens_by_id  # upstream's attribute name

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ---- text <-> pieces <-> ids ------------------------------------------------------------------------
    def _chunks(self, text: str) -> list[str]:
        if self.do_lower_case:
            text = text.lower()
        return self.split_to_words(text) if self.split_by_punct else [text]

    def split_to_words(self, text: str) -> list[str]:
        """Upstream's ``_run_split_on_punc``: every punctuation mark becomes a chunk of its own."""
        chunks, current = [], []
        for ch in text:
            if _is_punctuation(ch):
                if current:
                    chunks.append("".join(current))
                    current = []
                chunks.append(ch)
            else:
                current.append(ch)
        if current:
            chunks.append("".join(current))
        return chunks

    def tokenize(self, text: str) -> list[str]:
        """Text -> SentencePiece pieces; an unknown piece becomes ``[UNK]``."""
        chunks = self._chunks(text)
        if len(chunks) == 1:
            return lookup(self._piece_tokens, self.spm.encode(chunks[0]))
        return [t for chunk in chunks for t in lookup(self._piece_tokens, self.spm.encode(chunk))]

    def convert_tokens_to_ids(self, tokens) -> list[int]:
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        table = self.tokens_by_id
        return [table[int(i)] for i in ids]

    def decode(self, tokens) -> str:
        """Pieces -> text; special tokens are skipped."""
        return self.spm.decode_pieces([t for t in tokens if t not in self.special_tokens])

    def sym(self, id: int) -> str:  # noqa: A002 (upstream name)
        return self.tokens_by_id[id]

    def id(self, sym: str) -> int:  # noqa: A003 (upstream name)
        return self.vocab.get(sym, self.unk_token_id)

    def part_of_whole_word(self, token: str, is_bos: bool = False) -> bool:
        """True when ``token`` continues the previous token's word: it does not start with the SentencePiece word
        marker, is not a lone whitespace, control or punctuation character, and is not special (upstream's rule)."""
        if is_bos:
            return True
        if token in self.special_tokens or token.startswith(WORD_START):
            return False
        if len(token) == 1 and (_is_whitespace_or_control(token) or _is_punctuation(token)):
            return False
        return True

    # ---- fast paths for data prep and masking -----------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Text -> model ids (no [CLS]/[SEP])."""
        return self.encode_batch([text])[0].tolist()

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[np.ndarray]:
        """Texts -> model ids, one int64 array per text."""
        if self.split_by_punct:
            return [np.asarray(self.convert_tokens_to_ids(self.tokenize(t)), dtype=np.int64) for t in texts]
        texts = [t.lower() for t in texts] if self.do_lower_case else texts
        out = []
        for ids in self.spm.encode(texts, num_threads=num_threads):
            ids = np.asarray(ids, dtype=np.int64)
            ids[ids == self.spm.unk_id()] = self.unk_token_id  # the model's own unknown piece, if it is not [UNK]
            out.append(ids)
        return out

    def save_pretrained(self, path) -> str:
        """Copy the SentencePiece model as ``spm.model`` (``path`` may be a directory); returns the file path."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "spm.model")
        if os.path.abspath(path) != os.path.abspath(self.vocab_file):
            shutil.copyfile(self.vocab_file, path)
        return path

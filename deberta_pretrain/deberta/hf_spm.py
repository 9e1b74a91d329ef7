"""``tokenizer.json`` for a SentencePiece vocabulary: Hugging Face's fast tokenizer with exactly our ids.

``transformers``' own tokenizer for an ``spm.model`` (``DebertaV2Tokenizer``) drops byte fallback and part of
SentencePiece's normalisation, so emoji, rare scripts and accented letters become ``[UNK]`` where
:class:`SPMTokenizer` (data prep, and so the model in pretraining) saw byte pieces such as ``<0xF0>``. This module
builds the ``tokenizers`` pipeline that does what SentencePiece does for the model, read from its ``ModelProto``:

* normaliser: lowercasing (``do_lower_case``, with Python's final sigma), the model's precompiled character map
  (``nmt_nfkc``; none for ``identity``), removal of leading, trailing and repeated spaces, spaces as ``▁`` and the
  dummy ``▁`` prefix, each as the model's normalizer spec says;
* model: Unigram over the model's pieces and scores, with byte fallback; pieces SentencePiece never emits from text
  (control, unused and byte pieces) get a score no segmentation picks, as SentencePiece leaves them out of its
  lattice (else ``"<0x0A>"`` in a text would become the newline byte);
* user-defined pieces are cut out whole, as SentencePiece does;
* the specials that are not pieces (``[MASK]``) at :class:`SPMTokenizer`'s ids, and ``[CLS] a [SEP] b [SEP]`` with
  token type ids 0/1 around the text, as ``DebertaV2Tokenizer`` does.

Only ``protobuf`` (to read the model file), ``sentencepiece`` and ``tokenizers`` are needed; not ``transformers``.

What ``tokenizer.json`` cannot reproduce (rare; 0 of the 79 python-help topics, 2 of 1,030 3,000-character pieces of
the standard library's source):

* a special token spelt out in the text (``"[MASK]"``) is that token for Hugging Face, as its fill-mask pipeline
  needs, where our data prep encoded such text as ordinary pieces;
* SentencePiece's Viterbi sums scores in float32, ``tokenizers``' in float64: where two segmentations score (nearly)
  the same, typically reorderings of the same pieces in runs like ``-----`` or ``*****``, they can pick differently;
* ``tokenizers``' ``Precompiled`` normaliser maps a whole grapheme by its first character's rule, dropping what
  follows (fullwidth A and a combining acute give ``A``, SentencePiece ``Á``; CR LF gives one space, SentencePiece
  two, which shows only where the model keeps repeated spaces; huggingface/tokenizers#2116).
"""

from __future__ import annotations

import os
import re

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from .spm_tokenizer import WORD_START, SPMTokenizer

# Texts where a naive conversion goes wrong: byte fallback, whitespace, normalisation, piece look-alikes.
CHECK_TEXTS = (
    "line one\nline two\r\n\tindented\ttabs",
    "  leading, trailing and   repeated spaces  ",
    "emoji 🙂 and a ZWJ sequence 👩‍💻 and flags 🇩🇪",
    "Devanagari नमस्ते, Georgian გამარჯობა, CJK 漢字かなカナ, Ethiopic ሰላም, Hangul 한국어",
    "accents: naïve café Ångström Ærø ñ ß İstanbul",
    "NFKC: ﬁ ① ＡＢＣ … ™ ½ x²",
    "look-alikes of pieces: <0x0A> ［PAD］x ▁ ▁word a▁b",
    "",
    "   ",
    "\n",
)
NEVER_SCORE = -1e6  # below any path of real pieces: a piece SentencePiece never emits from text stays unused
FINAL_SIGMA = r"(?<=\p{Cased}\p{Case_Ignorable}*)Σ(?!\p{Case_Ignorable}*\p{Cased})"  # str.lower() makes it ς


def tokenizer_json(tokenizer: SPMTokenizer | str | os.PathLike) -> str:
    """The ``tokenizer.json`` text of Hugging Face's fast tokenizer that gives ``tokenizer``'s ids (an
    :class:`SPMTokenizer` or an ``spm.model`` path): ``encode(text)`` is ``[CLS] + tokenizer.encode(text) + [SEP]``.
    Raises ValueError for what it does not reproduce (a BPE SentencePiece model, ``split_by_punct``, whitespace as
    suffix)."""
    from sentencepiece import sentencepiece_model_pb2  # noqa: PLC0415 (needs protobuf)

    if not isinstance(tokenizer, SPMTokenizer):
        tokenizer = SPMTokenizer(tokenizer)
    proto = sentencepiece_model_pb2.ModelProto()
    with open(tokenizer.vocab_file, "rb") as f:
        proto.ParseFromString(f.read())
    trainer, spec, kinds = proto.trainer_spec, proto.normalizer_spec, proto.SentencePiece
    if trainer.model_type != trainer.UNIGRAM:
        raise ValueError(f"{tokenizer.vocab_file}: only unigram SentencePiece models are converted")
    if tokenizer.split_by_punct or trainer.treat_whitespace_as_suffix:
        raise ValueError("split_by_punct and treat_whitespace_as_suffix are not reproduced in tokenizer.json")

    # The unknown piece keeps its score: transformers 5's DebertaV2Tokenizer finds [UNK] by its score 0.
    vocab = [(p.piece, p.score if p.type in (kinds.NORMAL, kinds.USER_DEFINED, kinds.UNKNOWN) else NEVER_SCORE)
             for p in proto.pieces]
    hf = Tokenizer(Unigram(vocab, unk_id=tokenizer.spm.unk_id(), byte_fallback=trainer.byte_fallback))

    steps = []
    if tokenizer.do_lower_case:
        steps += [normalizers.Replace(Regex(FINAL_SIGMA), "ς"), normalizers.Lowercase()]
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # spaces only: SentencePiece leaves newlines and tabs alone
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", WORD_START))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(WORD_START))  # Metaspace would skip it where the text starts with "▁"
    hf.normalizer = normalizers.Sequence(steps)
    user_defined = [p.piece for p in proto.pieces if p.type == kinds.USER_DEFINED]
    if user_defined:  # SentencePiece emits them whole wherever they occur
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")

    # The specials in SPMTokenizer's order: the model's own pieces keep their ids, the others ([MASK]) come next.
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokenizer.special_tokens])
    for token in tokenizer.special_tokens:
        if hf.token_to_id(token) != tokenizer.vocab[token]:
            raise ValueError(f"{token} would get id {hf.token_to_id(token)}, not {tokenizer.vocab[token]}")
    cls, sep = tokenizer.cls_token, tokenizer.sep_token
    hf.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.cls_token_id), (sep, tokenizer.sep_token_id)])

    steps = [decoders.Replace(WORD_START, " ")]
    if trainer.byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    hf.decoder = decoders.Sequence(steps)
    return hf.to_str()


def write_tokenizer_json(tokenizer: SPMTokenizer, folder, check_texts=CHECK_TEXTS) -> list[str]:
    """Write ``folder/tokenizer.json`` (see :func:`tokenizer_json`) and compare its ids with ``tokenizer.encode`` on
    ``check_texts``; returns the texts whose ids differ (empty when Hugging Face reads the ids we trained on)."""
    text = tokenizer_json(tokenizer)
    with open(os.path.join(os.fspath(folder), "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(text)
    return differing_texts(tokenizer, text, check_texts)


def differing_texts(tokenizer: SPMTokenizer, tokenizer_json_text: str, texts) -> list[str]:
    """The ``texts`` that the fast tokenizer of ``tokenizer_json_text`` encodes otherwise than ``tokenizer``."""
    hf = Tokenizer.from_str(tokenizer_json_text)
    texts = list(texts)
    ours = tokenizer.encode_batch(texts)
    theirs = hf.encode_batch(texts, add_special_tokens=False)
    return [t for t, a, b in zip(texts, ours, theirs) if a.tolist() != b.ids]


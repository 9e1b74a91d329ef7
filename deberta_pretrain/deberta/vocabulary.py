"""Vocabulary files of both kinds, and the tokenizer each one needs.

* ``gpt2``: GPT-2 byte-level BPE, ``bpe_encoder.bin`` (DeBERTa v1) -> :class:`GPT2Tokenizer`;
* ``spm``: SentencePiece, ``spm.model`` (DeBERTa v2/v3, mDeBERTa) -> :class:`SPMTokenizer`.

The kind follows from the file name, else from the content (a ``bpe_encoder.bin`` is a torch zip archive, a
SentencePiece model a protobuf). A folder (ours, a release, a Hugging Face model) holds one of the two names.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

VOCAB_FILES = {"gpt2": "bpe_encoder.bin", "spm": "spm.model"}
KINDS = tuple(VOCAB_FILES)


def find_vocab(folder) -> str | None:
    """The vocabulary file in ``folder`` (``spm.model`` or ``bpe_encoder.bin``), or None."""
    for name in VOCAB_FILES.values():
        path = os.path.join(os.fspath(folder), name)
        if os.path.isfile(path):
            return path
    return None


def vocab_kind(path) -> str:
    """``gpt2`` or ``spm`` for the vocabulary file ``path``."""
    path = os.fspath(path)
    for kind, name in VOCAB_FILES.items():
        if os.path.basename(path) == name:
            return kind
    return "gpt2" if zipfile.is_zipfile(path) else "spm"


def resolve_vocab(vocab, kind: str | None = None) -> tuple[str | None, str]:
    """(vocabulary file, kind) for ``vocab``: a file, a folder holding one, a release name (``deberta-v3-base``,
    ``base``, ...: its vocabulary is downloaded), or None (GPT-2's own BPE). ``kind``, if given, must agree with the
    file's."""
    if vocab is None:
        if kind == "spm":
            raise ValueError("tokenizer=spm needs vocab= (an spm.model, or a model folder holding one)")
        return None, "gpt2"
    path = os.fspath(vocab)
    if os.path.isdir(path):
        found = find_vocab(path)
        if found is None:
            raise FileNotFoundError(f"vocab: {path} holds neither spm.model nor bpe_encoder.bin")
        path = found
    elif not os.path.exists(path):
        from .release import hub_name, resolve_vocab_path  # noqa: PLC0415

        if hub_name(path) is None:
            raise FileNotFoundError(f"vocab: {path} is neither a vocabulary file, a folder holding one, nor a "
                                    f"release name")
        path = resolve_vocab_path(path, kind=kind)  # a release name: downloaded once into the release cache
    found_kind = vocab_kind(path)
    if kind is not None and kind != found_kind:
        raise ValueError(f"tokenizer={kind}, but {path} is a {found_kind} vocabulary")
    return path, found_kind


def load_tokenizer(vocab=None, kind: str | None = None, **kwargs):
    """The tokenizer of ``vocab`` (see :func:`resolve_vocab`); ``kwargs`` go to its constructor."""
    from .gpt2_tokenizer import GPT2Tokenizer  # noqa: PLC0415
    from .spm_tokenizer import SPMTokenizer  # noqa: PLC0415

    path, kind = resolve_vocab(vocab, kind)
    if kind == "spm":
        kwargs.pop("engine", None)
        return SPMTokenizer(path, **kwargs)
    return GPT2Tokenizer(path, **kwargs)


def tokenizer_kind(tokenizer) -> str:
    return "spm" if hasattr(tokenizer, "spm") else "gpt2"


def vocab_identity(tokenizer) -> dict:
    """What ties ids to text, computed from content (the same vocabulary saved twice has the same identity): a sha256
    of the BPE tables and model-id order, or of the SentencePiece model with the added tokens; size, special ids."""
    kind = tokenizer_kind(tokenizer)
    if kind == "spm":
        digest = hashlib.sha256(tokenizer.spm.serialized_model_proto())
        digest.update(json.dumps(tokenizer.tokens_by_id[tokenizer.pieces:]).encode("utf-8"))
        return {"sha256": digest.hexdigest(), "size": tokenizer.vocab_size, "special_ids": tokenizer.special_ids(),
                "kind": kind, "file": VOCAB_FILES[kind]}
    encoder = tokenizer.gpt2_encoder
    canonical = json.dumps([sorted(encoder["encoder"].items()), [list(m) for m in encoder["vocab"]],
                            tokenizer.symbols], ensure_ascii=False, separators=(",", ":"))
    # no "kind"/"file" here: a GPT-2 identity without them is what data prepared before SentencePiece recorded
    return {"sha256": hashlib.sha256(canonical.encode("utf-8")).hexdigest(), "size": tokenizer.vocab_size,
            "special_ids": tokenizer.special_ids(), "dict_source": tokenizer.dict_source}


def identity_file(identity: dict) -> str:
    """The vocabulary file name that goes with a recorded identity."""
    return identity.get("file", VOCAB_FILES["gpt2"])

"""Train a vocabulary on a corpus: SentencePiece (DeBERTa v2/v3's ``spm.model``) or byte-level BPE (v1's
``bpe_encoder.bin`` format), on a sample of bounded size, with a tokens-per-word report on held-out documents.

* ``kind=spm``: a unigram SentencePiece model as v3's: ``[PAD] [CLS] [SEP] [UNK]`` are pieces 0-3, byte fallback
  (no character is ever unknown); :class:`SPMTokenizer` adds ``[MASK]`` after the pieces. Trained by the
  ``sentencepiece`` library.
* ``kind=gpt2-bpe``: GPT-2's byte-level BPE (its pre-tokenisation pattern and byte alphabet) with merges learnt on
  the corpus by Hugging Face's ``tokenizers`` trainer, written as our ``bpe_encoder.bin``: the 256 bytes in GPT-2's
  order, then one token per merge in merge order (so the fast tiktoken engine applies), then ``<|endoftext|>``; model
  ids are ``[PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3``, the BPE ids + 4, then ``[MASK]``.

Documents go to the held-out set by a hash of their text (``held_out_fraction``), the rest are sampled with
probability ``sample_mb / corpus size`` (all of a corpus smaller than that; the first ``sample_mb`` of a corpus of
unknown size), so memory stays bounded whatever the corpus. The output folder is written to a temporary folder
and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random

from ..fileio import claim_output, staged_folder, write_json_atomic
from .inputs import iter_documents, total_bytes

logger = logging.getLogger(__name__)
KINDS = ("spm", "gpt2-bpe")
SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
END_OF_TEXT = "<|endoftext|>"


def split_corpus(settings: dict, sample_mb: float, held_out_fraction: float, seed: int, progress: bool):
    """(sampled training documents, held-out documents, bytes read)."""
    budget = sample_mb * 1e6
    size = total_bytes(settings)
    keep = 1.0 if not size else min(1.0, budget / size)
    rng = random.Random(seed)
    train, held_out, taken, held, read = [], [], 0, 0, 0
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=size, unit="B", unit_scale=True, desc="reading")
    for document in iter_documents(settings):
        n = len(document.encode("utf-8"))
        read += n
        if bar is not None:
            bar.update(n)
        digest = int.from_bytes(hashlib.sha256(document.encode("utf-8")).digest()[:8], "big")
        if digest / 2**64 < held_out_fraction:
            if held < budget / 10:
                held_out.append(document)
                held += n
            continue
        if taken < budget and rng.random() < keep:
            train.append(document)
            taken += n
        elif not size and taken >= budget:
            break  # unknown size: the first sample_mb of the corpus
    if bar is not None:
        bar.close()
    if not train:
        raise ValueError("the input yielded no documents to train a vocabulary on")
    return train, held_out, read


def train_spm(documents: list[str], vocab_size: int, folder: str, character_coverage: float, threads: int) -> str:
    import io  # noqa: PLC0415

    import sentencepiece  # noqa: PLC0415

    lines = (line for doc in documents for line in doc.split("\n") if line.strip())
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=lines, model_writer=model, vocab_size=vocab_size, model_type="unigram",
            character_coverage=character_coverage, byte_fallback=True, pad_id=0, pad_piece="[PAD]", bos_id=1,
            bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]", num_threads=threads,
            minloglevel=2)
    except RuntimeError as e:  # e.g. more pieces asked for than the text has: the trainer says how many fit
        raise ValueError(f"sentencepiece could not train vocab_size={vocab_size}: {e}") from e
    path = os.path.join(folder, "spm.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


def train_gpt2_bpe(documents: list[str], vocab_size: int, folder: str) -> str:
    """``vocab_size`` counts the model's ids: 4 specials + BPE tokens (256 bytes, merges, ``<|endoftext|>``) +
    ``[MASK]``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

    from ..deberta.bpe import bytes_to_unicode  # noqa: PLC0415
    from ..deberta.gpt2_vocab import save_bpe_encoder  # noqa: PLC0415

    merges_wanted = vocab_size - len(SPECIALS) - 256 - 2
    if merges_wanted < 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for merges (the minimum is {len(SPECIALS) + 259})")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=256 + merges_wanted, initial_alphabet=alphabet, special_tokens=[],
                                  show_progress=False)
    tokenizer.train_from_iterator(documents, trainer=trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in _merges_of(tokenizer)]
    if len(merges) < merges_wanted:  # the text has no more pairs to merge: the trainer stops early
        logger.warning("the corpus supports only %d merges, not %d: the vocabulary has %d ids instead of "
                       "vocab_size=%d (train on more text, or ask for fewer)", len(merges), merges_wanted,
                       vocab_size - merges_wanted + len(merges), vocab_size)
    encoder = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    for first, second in merges:
        encoder.setdefault(first + second, len(encoder))
    encoder[END_OF_TEXT] = len(encoder)
    vocab = {"encoder": encoder, "vocab": [list(m) for m in merges],
             "dict_map": [[str(i), 1] for i in range(len(encoder))], "dict_source": "trained"}
    path = os.path.join(folder, "bpe_encoder.bin")
    save_bpe_encoder(vocab, path)
    return path


def _merges_of(tokenizer) -> list:
    """The learnt merges in order, from the serialised model (the Python API does not expose them directly)."""
    import json  # noqa: PLC0415

    return json.loads(tokenizer.to_str())["model"]["merges"]


def tokens_per_word(tokenizer, documents: list[str]) -> dict:
    words = sum(len(doc.split()) for doc in documents)
    tokens = sum(len(tokenizer.tokenize(doc)) for doc in documents)
    return {"held_out_documents": len(documents), "held_out_words": words, "held_out_tokens": tokens,
            "tokens_per_word": round(tokens / words, 4) if words else None}


def train_vocabulary(cfg: dict, progress: bool = True) -> dict:
    """Train the vocabulary described by ``cfg`` (``conf/data_prep/train_tokenizer.yaml``) into ``cfg['output']``;
    returns the report written there as ``report.json``."""
    from ..deberta.vocabulary import load_tokenizer, vocab_identity  # noqa: PLC0415

    kind, output = cfg["kind"], os.path.abspath(cfg["output"])
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {KINDS}")
    if cfg["vocab_size"] < 300:
        raise ValueError(f"vocab_size must be at least 300, got {cfg['vocab_size']}")
    claim_output(output, "report.json", "vocabulary of train_tokenizer.py", bool(cfg.get("overwrite")))
    train, held_out, read = split_corpus(cfg["input"], cfg["sample_mb"], cfg["held_out_fraction"], cfg["seed"],
                                         progress)
    logger.info("training a %s vocabulary of %d on %d documents (%.1f MB of %.1f MB read)", kind,
                cfg["vocab_size"], len(train), sum(len(d.encode()) for d in train) / 1e6, read / 1e6)
    with staged_folder(output) as staging:
        if kind == "spm":
            path = train_spm(train, cfg["vocab_size"], staging, cfg["character_coverage"], cfg["num_threads"])
        else:
            path = train_gpt2_bpe(train, cfg["vocab_size"], staging)
        tokenizer = load_tokenizer(path)
        identity = vocab_identity(tokenizer)
        report = {"kind": kind, "file": os.path.basename(path), "vocab_size": tokenizer.vocab_size,
                  "special_ids": identity["special_ids"], "sha256": identity["sha256"],
                  "documents_sampled": len(train), "bytes_read": read,
                  "bytes_sampled": sum(len(d.encode("utf-8")) for d in train),
                  **tokens_per_word(tokenizer, held_out)}
        write_json_atomic(os.path.join(staging, "report.json"), report)
    return report

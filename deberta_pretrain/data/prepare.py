"""Data prep: documents -> token ids (GPT-2 BPE or SentencePiece) -> packed ``[CLS] ... [SEP]`` blocks -> shards + ``manifest.json``.

The source is read once, in order, and cut into *segments* of about ``segment_mb`` MB of text. Each segment is
tokenized and packed on its own (in ``num_proc`` worker processes) into one train and one validation shard;
documents go to validation by a hash of their text, so duplicates never straddle the split. A segment is finished
when its record ``.prepare/segment-NNNNN.json`` exists: shards and records are written atomically, so a killed run
leaves only complete segments, and a re-run with the same settings skips every finished segment whose input is
unchanged. ``manifest.json`` is written last; until then the reader refuses the directory.

Memory stays bounded by a few segments per process whatever the corpus size.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import shutil

from .. import __version__
from ..deberta.vocabulary import VOCAB_FILES, identity_file, load_tokenizer, vocab_identity
from ..fileio import atomic_write, write_json_atomic
from .packing import PACKING_MODES, pack_documents
from .shards import MANIFEST, SPLITS, VERIFIED, shard_name
from .sources import iter_documents, total_bytes

logger = logging.getLogger(__name__)
WORK_DIR = ".prepare"  # settings.json and one record per finished segment
FORMAT = "deberta_pretrain.shards/1"
_TOKENIZERS: dict[tuple, object] = {}  # per process: loading a vocabulary takes about a second


def storage_dtype(vocab_size: int) -> str:
    return "<u2" if vocab_size <= 1 << 16 else "<i4"


def is_validation(text: str, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < fraction


def _tokenizer(vocab_file: str, engine: str):
    key = (vocab_file, engine)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(vocab_file, engine=engine)
    return _TOKENIZERS[key]


def segment_record_path(output: str, index: int) -> str:
    return os.path.join(output, WORK_DIR, f"segment-{index:05d}.json")


def process_segment(task: dict) -> dict:
    """Tokenize, pack and write one segment's shards, then its record (last, so the record means "complete")."""
    output, index = task["output"], task["index"]
    tokenizer = _tokenizer(os.path.join(output, task["vocab_file"]), task["engine"])
    for split in SPLITS:  # an earlier, different version of this segment may have had shards the new one lacks
        stale = os.path.join(output, shard_name(split, index))
        if os.path.exists(stale):
            os.remove(stale)
    by_split = {split: [] for split in SPLITS}
    for text in task["documents"]:
        by_split["validation" if is_validation(text, task["validation_fraction"]) else "train"].append(text)
    record = {"index": index, "input_sha256": task["input_sha256"], "num_bytes": task["num_bytes"], "splits": {}}
    for split, texts in by_split.items():
        documents = [ids for ids in tokenizer.encode_batch(texts) if len(ids)]
        blocks = pack_documents(documents, task["max_seq_length"], tokenizer.cls_token_id, tokenizer.sep_token_id,
                                tokenizer.pad_token_id, task["packing"])
        if not len(blocks):
            continue
        data = blocks.astype(task["dtype"]).tobytes()
        file = shard_name(split, index)
        atomic_write(os.path.join(output, file), lambda f: f.write(data))
        record["splits"][split] = {"file": file, "num_samples": len(blocks), "num_documents": len(documents),
                                   "num_tokens": int((blocks != tokenizer.pad_token_id).sum()), "bytes": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest()}
    write_json_atomic(segment_record_path(output, index), record)
    return record


def _finished_record(output: str, index: int, input_sha256: str) -> dict | None:
    """The record of a finished segment with this exact input whose shards are all present, else None."""
    try:
        with open(segment_record_path(output, index), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("input_sha256") != input_sha256:
        return None
    for shard in record["splits"].values():
        file = os.path.join(output, shard["file"])
        if not os.path.isfile(file) or os.path.getsize(file) != shard["bytes"]:
            return None
    return record


def _segments(documents, segment_bytes: int):
    """Consecutive documents in groups of about ``segment_bytes`` of UTF-8 text: (documents, bytes, sha256)."""
    group, size, digest = [], 0, hashlib.sha256()
    for text in documents:
        raw = text.encode("utf-8")
        group.append(text)
        size += len(raw)
        digest.update(len(raw).to_bytes(8, "little") + raw)
        if size >= segment_bytes:
            yield group, size, digest.hexdigest()
            group, size, digest = [], 0, hashlib.sha256()
    if group:
        yield group, size, digest.hexdigest()


def _check_settings(cfg: dict) -> None:
    if cfg["packing"] not in PACKING_MODES:
        raise ValueError(f"packing must be one of {PACKING_MODES}, got {cfg['packing']!r}")
    if int(cfg["max_seq_length"]) < 3:
        raise ValueError(f"max_seq_length must be >= 3, got {cfg['max_seq_length']}")
    if not 0 <= float(cfg["validation_fraction"]) < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {cfg['validation_fraction']}")
    if float(cfg["segment_mb"]) <= 0:
        raise ValueError(f"segment_mb must be > 0, got {cfg['segment_mb']}")


def _clear_prepared(output: str) -> None:
    """Remove what an earlier prepare wrote (and nothing else): manifest first, so a half-cleared directory is never
    taken for prepared data."""
    for name in (MANIFEST, VERIFIED, *VOCAB_FILES.values()):
        if os.path.exists(os.path.join(output, name)):
            os.remove(os.path.join(output, name))
    for split in SPLITS:
        for file in glob.glob(os.path.join(output, f"{split}-[0-9][0-9][0-9][0-9][0-9].bin")):
            os.remove(file)
    shutil.rmtree(os.path.join(output, WORK_DIR), ignore_errors=True)


def _start_output(output: str, settings: dict, overwrite: bool) -> None:
    settings_file = os.path.join(output, WORK_DIR, "settings.json")
    if os.path.isfile(settings_file) or os.path.isfile(os.path.join(output, MANIFEST)):
        try:
            with open(settings_file, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError):
            old = {}
        if old != settings:
            if not overwrite:
                changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise FileExistsError(f"{output} holds data prepared with other settings ({', '.join(changed)}); "
                                      f"pass overwrite=true to replace it, or choose another output=")
            _clear_prepared(output)
    if os.path.exists(os.path.join(output, MANIFEST)):
        os.remove(os.path.join(output, MANIFEST))  # the directory is in the making until the new manifest exists
    write_json_atomic(settings_file, settings)


def _run_segments(tasks, num_proc: int, done) -> None:
    """Run ``process_segment`` over ``tasks`` in order; ``done(record)`` is called in task order. At most
    ``2 * num_proc`` segments are in flight, so reading the source never runs ahead of tokenizing."""
    if num_proc <= 1:
        for task in tasks:
            done(process_segment(task))
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(num_proc) as pool:
        pending = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(process_segment, (task,)))
            while len(pending) >= 2 * num_proc:
                done(pending.popleft().get())
        while pending:
            done(pending.popleft().get())


def prepare(cfg: dict, progress: bool = True) -> dict:
    """Prepare the data described by ``cfg`` (the keys of ``conf/data_prep/prepare.yaml``); returns the manifest.

    Re-running with the same settings resumes (finished segments are kept); other settings in the same ``output``
    need ``overwrite=True``.
    """
    _check_settings(cfg)
    output = os.path.abspath(os.fspath(cfg["output"]))
    source = dict(cfg["source"])
    documents = iter_documents(source)  # checks the source (paths, type) before anything is written
    tokenizer = load_tokenizer(cfg.get("vocab"), cfg.get("tokenizer"), engine=cfg.get("engine", "auto"))
    vocab = vocab_identity(tokenizer)
    vocab_file = identity_file(vocab)
    length, packing = int(cfg["max_seq_length"]), cfg["packing"]
    settings = {"format": FORMAT, "source": source, "vocab": vocab, "max_seq_length": length, "packing": packing,
                "validation_fraction": float(cfg["validation_fraction"]), "segment_mb": float(cfg["segment_mb"])}
    os.makedirs(output, exist_ok=True)
    _start_output(output, settings, bool(cfg.get("overwrite", False)))
    tokenizer.save_pretrained(os.path.join(output, vocab_file))
    _TOKENIZERS[(os.path.join(output, vocab_file), cfg.get("engine", "auto"))] = tokenizer  # inherited by workers
    dtype = storage_dtype(tokenizer.vocab_size)

    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=total_bytes(source), unit="B", unit_scale=True, desc=f"prepare {os.path.basename(output)}")
    records: list[dict] = []
    skipped = 0

    def finished(record: dict) -> None:
        records.append(record)
        if bar is not None:
            bar.update(record["num_bytes"])

    def tasks():
        nonlocal skipped
        for index, (texts, num_bytes, digest) in enumerate(_segments(documents, int(cfg["segment_mb"] * 2**20))):
            record = _finished_record(output, index, digest)
            if record is not None:
                skipped += 1
                finished(record)  # records are sorted by index at the end
                continue
            yield {"output": output, "index": index, "documents": texts, "num_bytes": num_bytes,
                   "input_sha256": digest, "engine": cfg.get("engine", "auto"), "vocab_file": vocab_file,
                   "max_seq_length": length,
                   "packing": packing, "validation_fraction": settings["validation_fraction"], "dtype": dtype}

    try:
        _run_segments(tasks(), int(cfg.get("num_proc", 1)), finished)
    finally:
        if bar is not None:
            bar.close()
    records.sort(key=lambda r: r["index"])
    if skipped:
        logger.info("%d of %d segments were already prepared and kept", skipped, len(records))
    _remove_segments_from(output, len(records))
    manifest = _manifest(records, settings, dtype)
    if manifest["splits"]["train"]["num_samples"] == 0:
        raise ValueError(f"the source gave no training text ({source}); nothing was written to {output}")
    write_json_atomic(os.path.join(output, MANIFEST), manifest)
    return manifest


def _remove_segments_from(output: str, first: int) -> None:
    """Shards and records of segments beyond the current source's last one (the source shrank since)."""
    pattern = [os.path.join(output, f"{split}-*.bin") for split in SPLITS]
    pattern.append(os.path.join(output, WORK_DIR, "segment-*.json"))
    for file in (f for p in pattern for f in glob.glob(p)):
        digits = os.path.basename(file).rsplit("-", 1)[-1].split(".")[0]
        if digits.isdigit() and int(digits) >= first:
            os.remove(file)


def _manifest(records: list[dict], settings: dict, dtype: str) -> dict:
    splits = {}
    for split in SPLITS:
        shards = [r["splits"][split] for r in records if split in r["splits"]]
        splits[split] = {"shards": shards,
                         **{key: sum(s[key] for s in shards) for key in ("num_samples", "num_tokens",
                                                                          "num_documents")}}
    return {"format": FORMAT, "created_by": f"deberta_pretrain {__version__}", "max_seq_length":
            settings["max_seq_length"], "dtype": dtype, "packing": settings["packing"], "vocab": settings["vocab"],
            "source": settings["source"], "settings": settings, "num_segments": len(records), "splits": splits}


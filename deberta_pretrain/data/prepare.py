"""Data prep: documents -> token ids (GPT-2 BPE or SentencePiece) -> packed ``[CLS] ... [SEP]`` blocks -> shards +
``manifest.json``.

The input is read once, in order, and cut into *segments* of about ``segment_mb`` MB of text. Each segment is
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

from .. import __version__, remote
from ..config_keys import changed_keys
from ..deberta.vocabulary import identity_file, load_tokenizer, vocab_identity
from ..fileio import atomic_write, claim_output, replace_folder, write_json_atomic
from .inputs import iter_documents, total_bytes
from .packing import PACKING_MODES, pack_documents
from .shards import MANIFEST, SPLITS, shard_name
from .staging import upload_dataset

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


def _read_settings(folder: str) -> dict | None:
    """The settings of the prepare that wrote ``folder`` (an empty dict if it left only a manifest), or None when
    ``folder`` is not prepared data."""
    settings_file = os.path.join(folder, WORK_DIR, "settings.json")
    if not (os.path.isfile(settings_file) or os.path.isfile(os.path.join(folder, MANIFEST))):
        return None
    try:
        with open(settings_file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def _work_folder(output: str, settings: dict, overwrite: bool) -> str:
    """Where this prepare writes: ``output`` itself when it is new, empty or holds this very preparation (a re-run
    resumes it); a folder beside it when it holds data prepared with other settings and ``overwrite`` is set (it is
    renamed over ``output`` when complete, so a failure half way leaves the old data intact). Anything else is
    refused, naming what is there."""
    claim_output(output, (MANIFEST, os.path.join(WORK_DIR, "settings.json")), "prepared dataset",
                 overwrite=True)  # refuses any folder that is not prepared data
    old = _read_settings(output) if os.path.isdir(output) else None
    if old is None or old == settings:
        return output
    if not overwrite:
        changed = (f"input{key[len('source'):]}" if key.split(".")[0] == "source" else key  # the config's key
                   for key in changed_keys(old, settings))
        raise FileExistsError(f"{output} holds data prepared with other settings ({', '.join(changed)}); "
                              f"pass overwrite=true to replace it, or choose another output=")
    staging = os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.replacing")
    if _read_settings(staging) not in (None, settings):  # an interrupted replacement with yet other settings
        shutil.rmtree(staging)
    return staging


def _start_output(work: str, settings: dict) -> None:
    os.makedirs(work, exist_ok=True)
    write_json_atomic(os.path.join(work, WORK_DIR, "settings.json"), settings)


def _unpublish(output: str) -> None:
    """Remove the manifest before the first shard changes: the folder is in the making until the new one exists.
    (A re-run that changes nothing, or fails before changing anything, leaves a prepared dataset as it was.)"""
    if os.path.exists(os.path.join(output, MANIFEST)):
        os.remove(os.path.join(output, MANIFEST))


def _run_segments(tasks, num_proc: int, done) -> None:
    """Run ``process_segment`` over ``tasks`` in order; ``done(record)`` is called in task order. At most
    ``2 * num_proc`` segments are in flight, so reading the input never runs ahead of tokenizing."""
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
    need ``overwrite=True`` and replace it only once the new data is complete. A folder that is not prepared data
    is never written into. A first attempt that fails (bad input, no text) leaves ``output`` as it was.
    """
    _check_settings(cfg)
    if remote.is_remote(cfg["output"]):
        return prepare_to_storage(cfg, progress)
    output = os.path.abspath(os.fspath(cfg["output"]))
    given = dict(cfg["input"])
    documents = iter_documents(given)  # checks the input (paths, type) before anything is written
    tokenizer = load_tokenizer(cfg.get("vocab"), cfg.get("tokenizer"), engine=cfg["engine"])
    # the input is recorded under the key "source" of settings.json and manifest.json (the dataset format is
    # unchanged, so data prepared before the input was called so resumes and compares as before)
    settings = {"format": FORMAT, "source": given, "vocab": vocab_identity(tokenizer),
                "max_seq_length": int(cfg["max_seq_length"]), "packing": cfg["packing"],
                "validation_fraction": float(cfg["validation_fraction"]), "segment_mb": float(cfg["segment_mb"])}
    work = _work_folder(output, settings, bool(cfg.get("overwrite", False)))
    existed = os.path.isdir(work)
    fresh = not existed or not os.listdir(work)
    try:
        manifest = _prepare_into(work, cfg, settings, documents, tokenizer, progress)
    except Exception:
        if fresh:  # nothing of an earlier attempt was there: leave the folder as it was before this command
            shutil.rmtree(work, ignore_errors=True)
            if existed:
                os.makedirs(work)
        raise
    if work != output:
        replace_folder(work, output)
    return manifest


def prepare_to_storage(cfg: dict, progress: bool = True) -> dict:
    """``output=s3://...``: prepare into a local folder of the user's cache (resumable like any output), then upload
    it with ``manifest.json`` last (an interrupted upload resumes). A prefix holding other objects is refused; one
    holding a dataset of other settings is replaced only with ``overwrite=true``."""
    url = str(cfg["output"]).rstrip("/")
    remote.check_reachable(url, "output")
    names = remote.listdir(url)
    ours = {MANIFEST, "uploads.json"} & set(names)
    if names and not ours:
        raise FileExistsError(f"output={url} holds other objects ({', '.join(names[:5])}) and no prepared dataset; "
                              f"nothing was changed: choose another prefix")
    local = remote.cache_dir("prepare", remote.local_name(url))
    manifest = prepare({**cfg, "output": local}, progress)
    if MANIFEST in names:
        old = remote.read_json(remote.join(url, MANIFEST))
        if old == manifest:
            return manifest  # already uploaded
        if changed_keys(old.get("settings", {}), manifest["settings"]) and not cfg.get("overwrite"):
            raise FileExistsError(f"output={url} holds data prepared with other settings; nothing was changed: "
                                  f"add overwrite=true to replace it")
        remote.remove(remote.join(url, MANIFEST))  # readers stop trusting it before any shard changes
    upload_dataset(local, url)
    return manifest


def _prepare_into(output: str, cfg: dict, settings: dict, documents, tokenizer, progress: bool) -> dict:
    """Tokenize and pack ``documents`` into ``output`` (segments already there and unchanged are kept); the
    manifest is written last."""
    _start_output(output, settings)
    vocab_file, engine = identity_file(settings["vocab"]), cfg["engine"]
    tokenizer.save_pretrained(os.path.join(output, vocab_file))
    _TOKENIZERS[(os.path.join(output, vocab_file), engine)] = tokenizer  # inherited by workers
    dtype = storage_dtype(tokenizer.vocab_size)
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        name = os.path.basename(os.fspath(cfg["output"]))
        bar = tqdm(total=total_bytes(settings["source"]), unit="B", unit_scale=True, desc=f"prepare {name}")
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
            _unpublish(output)
            yield {"output": output, "index": index, "documents": texts, "num_bytes": num_bytes,
                   "input_sha256": digest, "engine": engine, "vocab_file": vocab_file,
                   "max_seq_length": settings["max_seq_length"], "packing": settings["packing"],
                   "validation_fraction": settings["validation_fraction"], "dtype": dtype}

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
        raise ValueError(f"the input gave no training text ({settings['source']})")
    write_json_atomic(os.path.join(output, MANIFEST), manifest)
    return manifest


def _remove_segments_from(output: str, first: int) -> None:
    """Shards and records of segments beyond the current input's last one (the input shrank since)."""
    pattern = [os.path.join(output, f"{split}-*.bin") for split in SPLITS]
    pattern.append(os.path.join(output, WORK_DIR, "segment-*.json"))
    for file in (f for p in pattern for f in glob.glob(p)):
        digits = os.path.basename(file).rsplit("-", 1)[-1].split(".")[0]
        if digits.isdigit() and int(digits) >= first:
            _unpublish(output)
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


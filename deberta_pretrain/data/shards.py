"""The on-disk format of prepared data, and its reader.

A prepared directory holds

* ``manifest.json``: written last, atomically; without it the directory is not usable. It records the block length,
  the storage dtype, the vocabulary identity (sha256, size, special ids), and per split the shards with their
  sample counts, byte sizes and sha256;
* ``bpe_encoder.bin`` (GPT-2 BPE) or ``spm.model`` (SentencePiece): the vocabulary the ids refer to, named in the
  manifest's ``vocab.file`` (data prepared before SentencePiece was supported has no such entry: GPT-2 BPE);
* ``{split}-{segment:05d}.bin``: raw little-endian blocks of ``max_seq_length`` ids (``<u2`` when the vocabulary
  fits in 16 bits, else ``<i4``, e.g. the v3 vocabulary's 128,100 ids), ``[CLS] ... [SEP]`` then ``[PAD]``.

:class:`ShardedDataset` maps the shards read-only and returns block ``i`` of the split by its global index, so any
rank of any node reads any sample in O(1) time and memory.
"""

from __future__ import annotations

import bisect
import json
import os

import numpy as np

from ..fileio import sha256_file, write_json_atomic
from ..layout import MANIFEST

VOCAB_FILE = "bpe_encoder.bin"
VERIFIED = ".verified.json"  # shards already hashed: {file: [size, mtime_ns, sha256]}
SPLITS = ("train", "validation")
VERIFY_MODES = ("full", "size", "none")


class DataError(ValueError):
    """Prepared data that cannot be trusted: missing, truncated or altered shards, or another vocabulary."""


def shard_name(split: str, segment: int) -> str:
    return f"{split}-{segment:05d}.bin"


def vocab_path(path, manifest: dict | None = None) -> str:
    """The vocabulary file of prepared data at ``path``."""
    from ..deberta.vocabulary import identity_file  # noqa: PLC0415

    manifest = manifest if manifest is not None else read_manifest(path)
    return os.path.join(os.fspath(path), identity_file(manifest["vocab"]))


def read_manifest(path) -> dict:
    file = os.path.join(os.fspath(path), MANIFEST)
    if not os.path.isfile(file):
        raise DataError(f"{os.fspath(path)}: no manifest.json, so this is not (completely) prepared data; run "
                        f"`python data_prep/prepare.py output={os.fspath(path)} ...` (it resumes where it stopped)")
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{file}: unreadable manifest: {e}") from e


class ShardedDataset:
    """Memory-mapped, read-only access to one split of prepared data.

    Args:
        path: a directory written by ``data_prep/prepare.py``.
        split: ``train`` or ``validation``.
        verify: ``full`` checks every shard's size and sha256 (a shard whose size and mtime are unchanged since it
            was last hashed is not hashed again), ``size`` only presence and size, ``none`` nothing.
        expected_vocab: vocabulary identity the data must have (any of ``sha256``, ``size``, ``special_ids``).
        manifest: the manifest, when it is not ``path``'s ``manifest.json`` (a streamed copy's).

    ``dataset[i]`` is block ``i`` as an int64 array of ``max_seq_length`` ids. The object pickles without its open
    maps, so DataLoader workers and other processes reopen the files lazily.
    """

    def __init__(self, path, split: str = "train", verify: str = "full", expected_vocab: dict | None = None,
                 manifest: dict | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.path, self.split = os.fspath(path), split
        self.manifest = manifest if manifest is not None else read_manifest(self.path)
        self.max_seq_length = int(self.manifest["max_seq_length"])
        self.dtype = np.dtype(self.manifest["dtype"])
        self.shards = self.manifest["splits"][split]["shards"]
        self._starts = list(np.cumsum([0] + [s["num_samples"] for s in self.shards]))
        self._maps: dict[int, np.memmap] = {}
        if expected_vocab:
            self.check_vocab(expected_vocab)
        if verify != "none":
            self.verify(full=verify == "full")

    def check_vocab(self, expected: dict) -> None:
        have = self.manifest["vocab"]
        for key, value in expected.items():
            if key in have and have[key] != value:
                raise DataError(f"{self.path}: the data was tokenized with another vocabulary (vocabulary {key} "
                                f"{have[key]} in manifest.json, the model's is {value}); prepare the data with the "
                                f"model's vocabulary")

    def verify(self, full: bool = True) -> None:
        """Raise :class:`DataError` naming the first missing, truncated or altered shard."""
        stamps_file = os.path.join(self.path, VERIFIED)
        try:
            with open(stamps_file, encoding="utf-8") as f:
                stamps = json.load(f)
        except (OSError, json.JSONDecodeError):
            stamps = {}
        changed = False
        for shard in self.shards:
            file = os.path.join(self.path, shard["file"])
            if not os.path.isfile(file):
                raise DataError(f"{file}: shard is missing (listed in manifest.json)")
            stat = os.stat(file)
            if stat.st_size != shard["bytes"]:
                raise DataError(f"{file}: shard is truncated or resized ({stat.st_size} bytes, manifest.json says "
                                f"{shard['bytes']})")
            if not full:
                continue
            stamp = [stat.st_size, stat.st_mtime_ns, shard["sha256"]]
            if stamps.get(shard["file"]) == stamp:
                continue
            if sha256_file(file) != shard["sha256"]:
                raise DataError(f"{file}: shard content was altered (sha256 differs from manifest.json)")
            stamps[shard["file"]] = stamp
            changed = True
        if changed:
            try:
                write_json_atomic(stamps_file, stamps)
            except OSError:
                pass  # read-only data: verify again next time

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _map(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            file = os.path.join(self.path, self.shards[shard]["file"])
            self._maps[shard] = np.memmap(file, dtype=self.dtype, mode="r").reshape(-1, self.max_seq_length)
        return self._maps[shard]

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} {self.split} samples in {self.path}")
        shard = bisect.bisect_right(self._starts, index) - 1
        return self._map(shard)[index - self._starts[shard]].astype(np.int64)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

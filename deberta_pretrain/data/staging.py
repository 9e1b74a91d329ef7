"""Staging prepared data to node-local disk (``data.stage_dir``), so that many nodes do not all read their random
samples from one shared filesystem.

The copy goes to ``<stage_dir>/<data dir name>-<manifest digest>``: another dataset, or the same one prepared again,
gets its own directory. Files are copied atomically, the manifest last, and files already there with the right
size are kept, so a restarted job copies only what is missing. The trainer then verifies the copy like any prepared
directory (sha256 of every shard), so a corrupt local disk is caught too.
"""

from __future__ import annotations

import hashlib
import os
import shutil

from ..fileio import atomic_write
from .shards import MANIFEST, SPLITS, read_manifest, vocab_path


def staged_path(source, stage_dir) -> str:
    """Where ``source`` (a prepared directory) is staged under ``stage_dir``."""
    source = os.path.abspath(os.fspath(source))
    read_manifest(source)  # a clear error if the source is not prepared data
    with open(os.path.join(source, MANIFEST), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return os.path.join(os.fspath(stage_dir), f"{os.path.basename(source)}-{digest}")


def stage_dataset(source, stage_dir) -> str:
    """Copy the prepared directory ``source`` under ``stage_dir`` (once; see the module docstring); returns the copy."""
    source = os.path.abspath(os.fspath(source))
    target = staged_path(source, stage_dir)
    if os.path.isfile(os.path.join(target, MANIFEST)):
        return target
    manifest = read_manifest(source)
    files = [os.path.basename(vocab_path(source, manifest))]
    files += [shard["file"] for split in SPLITS for shard in manifest["splits"][split]["shards"]]
    os.makedirs(target, exist_ok=True)
    for name in files + [MANIFEST]:
        src, dst = os.path.join(source, name), os.path.join(target, name)
        if name != MANIFEST and os.path.isfile(dst) and os.path.getsize(dst) == os.path.getsize(src):
            continue
        with open(src, "rb") as f:
            atomic_write(dst, lambda out: shutil.copyfileobj(f, out, 1 << 24))
    return target

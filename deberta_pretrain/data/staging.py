"""Staging prepared data to node-local disk (``data.stage_dir``), so that many nodes do not all read their random
samples from one shared filesystem, and fetching data from object storage (``s3://...``) the same way.

The copy goes to ``<stage_dir>/<data dir name>-<manifest digest>``: another dataset, or the same one prepared again,
gets its own directory. Files are copied atomically, the manifest last, and files already there with the right
size are kept, so a restarted job copies only what is missing. The trainer then verifies the copy like any prepared
directory (sha256 of every shard), so a corrupt local disk is caught too. Data in object storage is always staged
(to ``data.stage_dir``, or by default to the user's cache folder): each shard is checked against the manifest's
sha256 as it arrives, and a copy without its manifest (an interrupted fetch) is never used as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from .. import remote
from ..fileio import atomic_write, sha256_file
from .shards import MANIFEST, SPLITS, DataError, read_manifest, vocab_path
from .streaming import write_stream_manifest


def remote_manifest(url: str) -> bytes:
    try:
        return remote.read_bytes(remote.join(url, MANIFEST))
    except FileNotFoundError:
        raise DataError(f"{url}: no manifest.json, so this is not (completely) prepared data; run "
                        f"`python data_prep/prepare.py output={url} ...` (it resumes where it stopped)") from None


def staged_path(source, stage_dir) -> str:
    """Where ``source`` (a prepared directory or its URL) is staged under ``stage_dir``."""
    if remote.is_remote(source):
        manifest, name = remote_manifest(source), source.rstrip("/").rsplit("/", 1)[-1]
    else:
        source = os.path.abspath(os.fspath(source))
        read_manifest(source)  # a clear error if the source is not prepared data
        with open(os.path.join(source, MANIFEST), "rb") as f:
            manifest, name = f.read(), os.path.basename(source)
    return os.path.join(os.fspath(stage_dir), f"{name}-{hashlib.sha256(manifest).hexdigest()[:16]}")


def fetch_dataset(url: str, stage_dir, stream: bool = False) -> str:
    """Copy the prepared dataset at ``url`` (object storage) under ``stage_dir``; returns the copy. Shards already
    there with the manifest's sha256 are kept, so an interrupted fetch resumes; nothing is fetched when the copy is
    complete. ``stream``: fetch only the vocabulary and the validation shards, and keep the manifest as
    ``manifest.stream.json`` (the training shards are streamed: ``streaming``)."""
    target = staged_path(url, stage_dir)
    if os.path.isfile(os.path.join(target, MANIFEST)):
        return target
    data = remote_manifest(url)
    manifest = json.loads(data)
    expected = {shard["file"]: shard["sha256"] for split in (("validation",) if stream else SPLITS)
                for shard in manifest["splits"][split]["shards"]}
    vocab_file = os.path.basename(vocab_path(target, manifest))
    for name in [vocab_file, *expected]:
        local = os.path.join(target, name)
        if os.path.isfile(local) and (name not in expected or sha256_file(local) == expected[name]):
            continue
        remote.download(remote.join(url, name), local)
        if name in expected and sha256_file(local) != expected[name]:
            os.remove(local)
            raise DataError(f"{remote.join(url, name)}: the object's sha256 differs from manifest.json (altered or "
                            f"incomplete upload); prepare it again")
    if stream:
        write_stream_manifest(target, data)
    else:
        atomic_write(os.path.join(target, MANIFEST), lambda f: f.write(data))
    return target


def upload_dataset(local: str, url: str) -> None:
    """Upload the prepared dataset ``local`` to ``url``: the vocabulary and shards first, ``manifest.json`` last,
    so that a reader never sees a dataset without all its shards. ``uploads.json`` at ``url`` records the sha256 of
    each shard sent, so an interrupted upload resumes without sending them again."""
    manifest = read_manifest(local)
    record_url = remote.join(url, "uploads.json")
    try:
        sent = remote.read_json(record_url)
    except (FileNotFoundError, ValueError):
        sent = {}
    shards = {shard["file"]: shard for split in SPLITS for shard in manifest["splits"][split]["shards"]}
    for name in [os.path.basename(vocab_path(local, manifest)), *shards]:
        digest = shards[name]["sha256"] if name in shards else sha256_file(os.path.join(local, name))
        if sent.get(name) == digest and remote.size(remote.join(url, name)) == os.path.getsize(
                os.path.join(local, name)):
            continue
        remote.upload(os.path.join(local, name), remote.join(url, name))
        sent[name] = digest
        remote.write_json(record_url, sent)
    remote.upload(os.path.join(local, MANIFEST), remote.join(url, MANIFEST))


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

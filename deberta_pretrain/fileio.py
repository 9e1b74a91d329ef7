"""File helpers shared by data prep, checkpoints and export: atomic writes and hashing.

An atomic write goes to a temporary file in the target directory, is flushed to disk, gets the permissions a
normal file would get (umask), and is renamed over the target: readers see the old file or the complete new one,
never a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file; mkstemp creates 0600


def sha256_file(path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path, write) -> None:
    """Create ``path`` atomically; ``write(f)`` writes the content to the binary file object ``f``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # data is shared with other users and nodes
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path, obj) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


@contextlib.contextmanager
def staged_folder(output):
    """Yield a temporary folder beside ``output``; when the block completes, give its content normal permissions
    and rename it to ``output`` (replacing an existing one). On an error it is removed: ``output`` is either as it
    was or complete."""
    output = os.path.abspath(os.fspath(output))
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output)}.", suffix=".tmp")
    try:
        yield staging
        for folder, _, files in os.walk(staging):  # mkdtemp and some writers create owner-only files
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), FILE_MODE)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""File helpers shared by data prep, checkpoints and export: atomic writes, hashing, and output folders that a tool
replaces only when they are its own.

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

from .layout import owned_by_another_tool

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
    """Write ``obj`` to ``path`` as JSON, atomically. NaN and infinities are refused with a ``ValueError`` naming
    ``path`` (nothing is written): JSON has neither, and strict readers reject a file that holds them."""
    try:
        data = (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    except ValueError as e:
        raise ValueError(f"{path}: not written: {e} (a NaN or an infinity, which JSON cannot hold)") from None
    atomic_write(path, lambda f: f.write(data))


def describe_folder(folder: str, limit: int = 5) -> str:
    """The first names in ``folder``, for an error message: ``a, b/, c and 4 more``."""
    names = sorted(n + ("/" if os.path.isdir(os.path.join(folder, n)) else "") for n in os.listdir(folder))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def claim_output(output, marker, what: str, overwrite: bool, nested_ok: bool = False) -> None:
    """Check that ``output`` may receive a new ``what`` (e.g. "export"): it is absent, empty, or an earlier
    ``what`` (it holds ``marker``, a file name or a tuple of them) and ``overwrite`` is set; unless ``nested_ok``,
    it is not inside another output either. Anything else is refused with a ``FileExistsError`` that names what is
    there: a tool replaces only its own kind of output, never a run directory, a dataset or a folder of the user's
    files."""
    output = os.path.abspath(os.fspath(output))
    owner = None if nested_ok else owned_by_another_tool(output)
    if owner:
        raise FileExistsError(f"output: {output} is inside {owner}, which belongs to another output (a run's "
                              f"checkpoints, a prepared dataset or an export); choose a folder outside it")
    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(f"output: {output} is a file, not a folder")
    if not os.path.isdir(output) or not os.listdir(output):
        return
    markers = (marker,) if isinstance(marker, str) else tuple(marker)
    if not any(os.path.isfile(os.path.join(output, m)) for m in markers):
        raise FileExistsError(f"output: {output} is not empty and is not an earlier {what} (no {markers[0]}; it "
                              f"holds {describe_folder(output)}); nothing was changed: choose a new or empty folder")
    if not overwrite:
        raise FileExistsError(f"output: {output} holds an earlier {what}; pass overwrite=true to replace it, or "
                              f"choose another folder")


def replace_folder(staging: str, output: str) -> None:
    """Put the complete folder ``staging`` in the place of ``output`` (which may exist): the old one is renamed
    aside first and removed only after the new one is in place."""
    old = None
    if os.path.exists(output):
        old = tempfile.mkdtemp(dir=os.path.dirname(output), prefix=f".{os.path.basename(output)}.", suffix=".old")
        os.rmdir(old)
        os.replace(output, old)
    try:
        os.replace(staging, output)
    except OSError:
        if old:
            os.replace(old, output)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(output):
    """Yield a temporary folder beside ``output``; when the block completes, give its content normal permissions
    and rename it to ``output`` (replacing an existing one, see :func:`replace_folder`). On an error it is removed:
    ``output`` is either as it was or complete."""
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
        replace_folder(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

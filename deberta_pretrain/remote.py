"""Object storage (``s3://``, and any other fsspec protocol whose package is installed, e.g. ``gs://`` with gcsfs).

fsspec does the talking (s3fs for ``s3://``); credentials and the endpoint come from the standard environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for MinIO, R2 or a test server,
``~/.aws``, fsspec's config), never from our config files, so they never reach a log, a metrics file or a saved
config. This module adds what every caller needs on top: one-line errors that name the key and the object, a
reachability check before anything is written, atomic local downloads, folder transfers and a cache folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

from .layout import EXPORT_MARKER

S3_OPTIONS = {
    # fail fast and let callers retry with their own backoff, so that a lost endpoint costs seconds
    "config_kwargs": {"connect_timeout": 10, "read_timeout": 120, "retries": {"max_attempts": 2, "mode": "standard"}},
    # no cached listings: the mirror decides what is complete (and what to delete) from what is there now
    "use_listings_cache": False,
}


for _name in ("botocore", "aiobotocore", "s3fs", "fsspec"):  # their INFO lines ("Found credentials ...") are noise
    logging.getLogger(_name).setLevel(logging.WARNING)


logger = logging.getLogger("deberta_pretrain")
RETRY_DELAYS = (1, 2, 4)  # seconds between the attempts of one transfer (each attempt retries once itself)


class StorageError(OSError):
    """Object storage could not be read or written; the message names the object and the cause."""


def is_remote(path) -> bool:
    """A URL of object storage (``s3://bucket/key``), as opposed to a local path."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def s3_options() -> dict:
    """``S3_OPTIONS`` with the endpoint of the environment (``AWS_ENDPOINT_URL``): fsspec reuses a filesystem made
    with the same options, so the endpoint must be one of them, or a changed endpoint would reach the old one."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return {**S3_OPTIONS, **({"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {})}


def filesystem(url: str):
    """(fsspec filesystem, path inside it) of ``url``."""
    import fsspec  # noqa: PLC0415

    protocol = url.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(url, **(s3_options() if protocol in ("s3", "s3a") else {}))
    except (ImportError, ValueError) as e:
        raise StorageError(f"{url}: no filesystem for {protocol}:// ({e}); install its fsspec package (s3fs for "
                           f"s3://, gcsfs for gs://)") from e


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def describe(error: Exception) -> str:
    """An exception in one line, without the parts a boto error repeats."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_reachable(url: str, key: str) -> None:
    """Raise ``StorageError`` naming ``key`` when the bucket of ``url`` does not exist or the credentials are not
    accepted (a listing of the bucket is the cheapest request that needs both)."""
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        fs.ls(bucket, refresh=True)
    except FileNotFoundError as e:
        raise StorageError(f"{key}: {url}: the bucket {bucket} does not exist ({describe(e)})") from e
    except Exception as e:  # noqa: BLE001 - credentials, endpoint, network: all are named the same way
        raise StorageError(f"{key}: {url}: cannot use the bucket {bucket} ({describe(e)}); check AWS_ACCESS_KEY_ID, "
                           f"AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL (or your fsspec configuration)") from e


def with_retries(action, what: str, final: tuple = ()):
    """``action()``, attempted again after each of :data:`RETRY_DELAYS` when it fails (a warning each time);
    ``StorageError`` naming ``what`` when the last attempt fails too. Exceptions of the ``final`` types are not
    retried (a missing object, a full disk: waiting does not help)."""
    for attempt, delay in enumerate((*RETRY_DELAYS, None)):
        try:
            return action()
        except final:
            raise
        except Exception as e:  # noqa: BLE001 - storage errors come in many types; all are retried
            error = e
            logger.warning("%s failed (attempt %d of %d): %s", what, attempt + 1, len(RETRY_DELAYS) + 1, describe(e))
        if delay is not None:
            time.sleep(delay)
    raise StorageError(f"{what}: {describe(error)}")


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def size(url: str) -> int | None:
    """The size of the object at ``url``, or None when there is none."""
    fs, path = filesystem(url)
    try:
        return int(fs.info(path)["size"])
    except FileNotFoundError:
        return None


def listdir(url: str) -> list[str]:
    """The names directly under ``url`` (files and prefixes); empty when there are none."""
    fs, path = filesystem(url)
    try:
        return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False, refresh=True))
    except FileNotFoundError:
        return []


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return f.read()


def read_json(url: str):
    return json.loads(read_bytes(url))


def write_json(url: str, obj) -> None:
    fs, path = filesystem(url)
    with fs.open(path, "wb") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode())


def upload(local: str, url: str) -> None:
    """Copy the local file to ``url`` (an object appears whole or not at all)."""
    fs, path = filesystem(url)
    fs.put_file(local, path)


def download(url: str, local: str) -> None:
    """Copy the object at ``url`` to the local file, atomically (a partial download never has the final name)."""
    fs, path = filesystem(url)
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    partial = f"{local}.partial-{os.getpid()}"
    try:
        fs.get_file(path, partial)
        os.replace(partial, local)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def remove(url: str) -> None:
    fs, path = filesystem(url)
    fs.rm(path, recursive=True)


def files_under(url: str) -> list[str]:
    """Every file below ``url``, as paths relative to it."""
    fs, path = filesystem(url)
    root = path.rstrip("/") + "/"
    return sorted(p[len(root):] for p in fs.find(root) if p.startswith(root))


def cache_dir(*parts: str) -> str:
    """Our folder in the user's cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "deberta_pretrain", *parts)


def local_name(url: str) -> str:
    """A folder name for ``url``: readable, and unique by a digest of the whole URL."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return f"{url.rstrip('/').rsplit('/', 1)[-1] or 'root'}-{digest}"


def download_folder(url: str, local: str, marker: str) -> str:
    """Copy every object below ``url`` into ``local`` (once: a folder holding ``marker`` is complete, and
    ``marker`` is copied last). Raises ``StorageError`` when ``url`` holds no ``marker``."""
    if os.path.isfile(os.path.join(local, marker)):
        return local
    names = files_under(url)
    if marker not in names:
        raise StorageError(f"{url}: no {marker} there (is it a complete export, run or dataset?)")
    for name in [n for n in names if n != marker] + [marker]:
        download(join(url, name), os.path.join(local, name))
    return local


def upload_folder(local: str, url: str, marker: str) -> None:
    """Upload every file below ``local`` to ``url``, ``marker`` last (a reader trusts the folder once it is there)."""
    names = sorted(os.path.relpath(os.path.join(root, f), local) for root, _, files in os.walk(local) for f in files)
    for name in [n for n in names if n != marker] + [marker]:
        upload(os.path.join(local, name), join(url, name))




def fetch_export(url: str, key: str) -> str:
    """A local copy (in the user's cache) of the export at ``url``; a later export to the same URL gets its own
    copy. Raises ``StorageError`` naming ``key`` when ``url`` holds no complete export."""
    check_reachable(url, key)
    try:
        marker = read_bytes(join(url, EXPORT_MARKER))
    except FileNotFoundError:
        raise StorageError(f"{key}={url}: no {EXPORT_MARKER} there; give the output= of a completed "
                           f"launch/export.py") from None
    folder = cache_dir("models", f"{local_name(url)}-{hashlib.sha256(marker).hexdigest()[:8]}")
    return download_folder(url, folder, EXPORT_MARKER)

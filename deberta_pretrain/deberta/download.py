"""Downloading one file safely: streamed with ``requests`` (progress bar, timeouts, retries), hashed while it is
written to a temporary file beside the target, and renamed into place only when complete and verified. A failed,
truncated or wrong-hash download raises :class:`DownloadError` and leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import time

from ..fileio import atomic_write


class DownloadError(OSError):
    """A download that failed or did not verify; the message names the URL."""


class _Retryable(Exception):
    pass


def download_file(url: str, target: str, expected_sha256: str | None = None, timeout: float = 30.0,
                  retries: int = 3, progress: bool = True) -> dict:
    """Download ``url`` to ``target``; returns ``{"size", "sha256", "url"}``.

    ``timeout`` bounds connecting and every wait for data (seconds); connection errors, timeouts and 5xx answers are
    retried ``retries`` times with a growing pause. A 4xx answer, a body shorter than its Content-Length or a
    sha256 other than ``expected_sha256`` fail at once."""
    import requests  # noqa: PLC0415

    last_error = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2.0**attempt, 30.0))
        try:
            return _download_once(requests, url, target, expected_sha256, timeout, progress)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                _Retryable) as e:
            last_error = e
    raise DownloadError(f"could not download {url} after {retries + 1} attempts: {last_error}")


def _download_once(requests, url, target, expected_sha256, timeout, progress) -> dict:
    with requests.get(url, stream=True, timeout=(timeout, timeout)) as response:
        if response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise DownloadError(f"could not download {url}: HTTP {response.status_code} {response.reason}")
        expected_size = response.headers.get("Content-Length")
        expected_size = int(expected_size) if expected_size and expected_size.isdigit() else None
        digest, size = hashlib.sha256(), 0
        bar = None
        if progress:
            from tqdm import tqdm  # noqa: PLC0415

            bar = tqdm(total=expected_size, unit="B", unit_scale=True, desc=os.path.basename(target), leave=False)

        def write_verified(f) -> None:  # raising here leaves no file behind (atomic_write)
            nonlocal size
            for chunk in response.iter_content(chunk_size=1 << 20):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if expected_size is not None and size != expected_size:
                raise DownloadError(f"download of {url} is truncated: {size} of {expected_size} bytes")
            if expected_sha256 and digest.hexdigest() != expected_sha256.lower():
                raise DownloadError(f"download of {url} has sha256 {digest.hexdigest()}, expected {expected_sha256}")

        try:
            atomic_write(target, write_verified)
        finally:
            if bar is not None:
                bar.close()
    return {"size": size, "sha256": digest.hexdigest(), "url": url}

"""Microsoft's released DeBERTa models by name: where they are downloaded from and how they are cached.

A name (``base``, ``large``, ``base_mnli``, ``deberta-v3-base``, ...; see :data:`RELEASE_NAMES`) resolves to a
folder ``~/.~DeBERTa/assets/{tag or latest}/{name}/`` (or under ``cache_dir``) holding ``pytorch_model.bin``,
``model_config.json`` (the release's ``config.json``) and, when asked for, the vocabulary (``bpe_encoder.bin`` for
v1 models, ``spm.model`` for v2/v3). Files come from
``https://huggingface.co/microsoft/{name}/resolve/{revision}/{file}``; set ``DEBERTA_RELEASE_URL`` to another
template with ``{name}``, ``{file}`` (and optionally ``{revision}``) for a mirror or a local server. The cache
records each file's size and sha256 (``.cache.json``) and checks them on every reuse; a file lock makes all
processes of a node wait for one download. ``no_cache=True`` downloads to a fresh temporary
folder and leaves the cache untouched. A local path is always used as it is.
"""

from __future__ import annotations

import json
import os
import tempfile

from ..fileio import sha256_file, write_json_atomic
from ..layout import MODEL_CONFIG
from .download import DownloadError, download_file

# Short names accepted by upstream's loader -> hub repository names (the hub names are accepted as well).
RELEASE_NAMES = {
    "base": "deberta-base", "large": "deberta-large", "base_mnli": "deberta-base-mnli",
    "large_mnli": "deberta-large-mnli", "base-mnli": "deberta-base-mnli", "large-mnli": "deberta-large-mnli",
    "xlarge": "deberta-xlarge", "xlarge-mnli": "deberta-xlarge-mnli", "xlarge-v2": "deberta-v2-xlarge",
    "xxlarge-v2": "deberta-v2-xxlarge", "deberta-v3-xsmall": "deberta-v3-xsmall",
    "deberta-v3-small": "deberta-v3-small", "deberta-v3-base": "deberta-v3-base",
    "deberta-v3-large": "deberta-v3-large", "mdeberta-v3-base": "mdeberta-v3-base",
}
HUB_NAMES = set(RELEASE_NAMES.values())
DEFAULT_URL = "https://huggingface.co/microsoft/{name}/resolve/{revision}/{file}"
URL_ENV, TIMEOUT_ENV, RETRIES_ENV = "DEBERTA_RELEASE_URL", "DEBERTA_DOWNLOAD_TIMEOUT", "DEBERTA_DOWNLOAD_RETRIES"
WEIGHTS, CONFIG, VOCAB, SPM_VOCAB = "pytorch_model.bin", MODEL_CONFIG, "bpe_encoder.bin", "spm.model"
REMOTE_NAME = {CONFIG: "config.json"}  # the hub stores model_config.json as config.json
RECORD = ".cache.json"


def hub_name(name: str) -> str | None:
    return RELEASE_NAMES.get(name) or (name if name in HUB_NAMES else None)


def vocab_file_of(repo: str) -> str:
    """The vocabulary file of a release: SentencePiece for the v2/v3 models, GPT-2 BPE for v1."""
    return SPM_VOCAB if "-v2" in repo or "-v3" in repo else VOCAB


def release_url(name: str, file: str, tag: str | None = None) -> str:
    template = os.environ.get(URL_ENV) or DEFAULT_URL
    return template.format(name=name, file=REMOTE_NAME.get(file, file), revision=tag or "main")


def default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".~DeBERTa", "assets")


def _read_record(folder: str) -> dict:
    try:
        with open(os.path.join(folder, RECORD), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def _cached(folder: str, file: str, record: dict, expected_sha256: str | None) -> bool:
    """True when ``file`` is in the cache with the recorded size and sha256 (and the expected one, if given)."""
    entry, path = record.get(file), os.path.join(folder, file)
    if not entry or not os.path.isfile(path) or os.path.getsize(path) != entry["size"]:
        return False
    if expected_sha256 and entry["sha256"] != expected_sha256.lower():
        return False
    return sha256_file(path) == entry["sha256"]


def fetch_release(name: str, files=(WEIGHTS, CONFIG), tag: str | None = None, no_cache: bool = False,
                  cache_dir=None, sha256: dict | None = None, progress: bool = True) -> str:
    """Make ``files`` of release ``name`` available locally; returns their folder (see the module docstring).

    ``sha256`` maps file names to expected hashes (a mismatch is an error and nothing is cached)."""
    from filelock import FileLock  # noqa: PLC0415

    repo = hub_name(name)
    if repo is None:
        raise FileNotFoundError(f"{name!r} is not a DeBERTa release name ({', '.join(sorted(RELEASE_NAMES))})")
    timeout = float(os.environ.get(TIMEOUT_ENV, 30))
    retries = int(os.environ.get(RETRIES_ENV, 3))
    sha256 = sha256 or {}
    if no_cache:
        folder = tempfile.mkdtemp(prefix=f"deberta-{repo}-")
        for file in files:
            _download(repo, file, tag, os.path.join(folder, file), sha256.get(file), timeout, retries, progress)
        return folder
    folder = os.path.join(os.fspath(cache_dir or default_cache_dir()), tag or "latest", repo)
    os.makedirs(folder, exist_ok=True)
    with FileLock(os.path.join(folder, ".lock")):
        record = _read_record(folder)
        for file in files:
            if _cached(folder, file, record, sha256.get(file)):
                continue
            record[file] = _download(repo, file, tag, os.path.join(folder, file), sha256.get(file), timeout,
                                     retries, progress)
            write_json_atomic(os.path.join(folder, RECORD), record)
    return folder


def _download(repo, file, tag, target, expected, timeout, retries, progress) -> dict:
    url = release_url(repo, file, tag)
    try:
        return download_file(url, target, expected, timeout=timeout, retries=retries, progress=progress)
    except DownloadError as e:
        raise DownloadError(f"{e}. Without network access, download microsoft/{repo} elsewhere and pass its local "
                            f"directory instead of the name (or set {URL_ENV} to a mirror)") from e


def resolve_model_path(model_path, tag=None, no_cache=False, cache_dir=None, sha256=None) -> str:
    """A local weights file or directory as it is; a release name -> its downloaded (cached) folder."""
    model_path = os.fspath(model_path)
    if os.path.exists(model_path):
        return model_path
    if hub_name(model_path) is None:
        raise FileNotFoundError(f"model not found: {model_path!r} is neither a local file/directory nor a release "
                                f"name ({', '.join(sorted(RELEASE_NAMES))})")
    return fetch_release(model_path, tag=tag, no_cache=no_cache, cache_dir=cache_dir, sha256=sha256)


def resolve_vocab_path(vocab_file, tag=None, no_cache=False, cache_dir=None, kind: str | None = None) -> str:
    """A local vocabulary file as it is; a release name -> its downloaded vocabulary (``bpe_encoder.bin`` for v1,
    ``spm.model`` for v2/v3). ``kind="gpt2"`` refuses a SentencePiece release."""
    vocab_file = os.fspath(vocab_file)
    if os.path.exists(vocab_file):
        return vocab_file
    repo = hub_name(vocab_file)
    if repo is None:
        raise FileNotFoundError(f"vocabulary not found: {vocab_file!r} is neither a local file nor a release name; "
                                f"build one with `python data_prep/build_vocab.py output=<dir>/bpe_encoder.bin`")
    file = vocab_file_of(repo)
    if kind == "gpt2" and file == SPM_VOCAB:
        raise ValueError(f"{vocab_file!r} uses a SentencePiece vocabulary (spm.model), not GPT-2 BPE; GPT2Tokenizer "
                         f"reads the v1 releases' bpe_encoder.bin only (SPMTokenizer reads spm.model)")
    folder = fetch_release(vocab_file, files=(file,), tag=tag, no_cache=no_cache, cache_dir=cache_dir)
    return os.path.join(folder, file)

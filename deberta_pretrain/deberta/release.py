"""Release names -> local files. Local paths are used as they are; release names are resolved through the
download cache (see issue 3; until then an unknown path is a clear error)."""

from __future__ import annotations

import os

# Short names accepted by upstream's loader, mapped to their hub repository names.
RELEASE_NAMES = {
    "base": "deberta-base", "large": "deberta-large", "base_mnli": "deberta-base-mnli",
    "large_mnli": "deberta-large-mnli", "base-mnli": "deberta-base-mnli", "large-mnli": "deberta-large-mnli",
    "xlarge": "deberta-xlarge", "xlarge-mnli": "deberta-xlarge-mnli", "xlarge-v2": "deberta-v2-xlarge",
    "xxlarge-v2": "deberta-v2-xxlarge", "deberta-v3-xsmall": "deberta-v3-xsmall",
    "deberta-v3-small": "deberta-v3-small", "deberta-v3-base": "deberta-v3-base",
    "deberta-v3-large": "deberta-v3-large", "mdeberta-v3-base": "mdeberta-v3-base",
}


def resolve_model_path(model_path: str, tag=None, no_cache=False, cache_dir=None) -> str:
    """A local weights file or directory as is; otherwise an error that says what was looked for."""
    model_path = os.fspath(model_path)
    if os.path.exists(model_path):
        return model_path
    if model_path in RELEASE_NAMES:
        raise FileNotFoundError(
            f"{model_path!r} is a DeBERTa release name, but downloading releases is not available in this build; "
            f"download microsoft/{RELEASE_NAMES[model_path]} yourself and pass the local directory instead")
    raise FileNotFoundError(f"model not found: {model_path!r} is neither a local file/directory nor a release name "
                            f"({', '.join(sorted(RELEASE_NAMES))})")


def resolve_vocab_path(vocab_file: str, tag=None, no_cache=False, cache_dir=None) -> str:
    """A local vocabulary file as is; otherwise an error naming what was looked for."""
    vocab_file = os.fspath(vocab_file)
    if os.path.exists(vocab_file):
        return vocab_file
    raise FileNotFoundError(f"vocabulary not found: {vocab_file!r} is not a local file; build one with "
                            f"`python data_prep/build_vocab.py output=<dir>/bpe_encoder.bin`")

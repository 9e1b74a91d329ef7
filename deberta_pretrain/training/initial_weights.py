"""Continued pretraining: start from released (or exported) weights given by ``model.init_from``.

The release's ``model_config.json`` fixes the shape (the run's ``model.*`` keys still set dropout and the like, as
upstream's config merge does), and its vocabulary must be the one the data was prepared with: otherwise every id
would mean another token, which trains silently into nonsense. A release name downloads weights, config and
vocabulary through the release cache.
"""

from __future__ import annotations

import logging
import os

from ..deberta import ModelConfig
from ..deberta.loading import find_weights_file, load_model_state, merge_configs
from ..deberta.release import hub_name, resolve_model_path, resolve_vocab_path
from ..deberta.vocabulary import find_vocab, load_tokenizer, vocab_identity

logger = logging.getLogger(__name__)


def load_initial_weights(init_from: str, run_config: ModelConfig, data_vocab: dict) -> tuple[dict, ModelConfig]:
    """(state dict, merged model config) of ``init_from``; raises ``ValueError`` when its vocabulary differs from
    the data's (``data_vocab``: the manifest's vocabulary identity)."""
    weights = find_weights_file(resolve_model_path(init_from))
    state, release_config = load_model_state(weights)
    config = merge_configs(release_config, run_config).validate()
    if hub_name(init_from) and not os.path.exists(init_from):
        vocab_file = resolve_vocab_path(init_from)
    else:
        vocab_file = find_vocab(os.path.dirname(os.path.abspath(weights)))
    if vocab_file is None or not os.path.isfile(vocab_file):
        logger.warning("model.init_from=%s has no vocabulary (spm.model or bpe_encoder.bin) beside its weights: "
                       "cannot check that the data uses its vocabulary", init_from)
        return state, config
    if vocab_identity(load_tokenizer(vocab_file))["sha256"] != data_vocab["sha256"]:
        raise ValueError(f"model.init_from={init_from} was trained with the vocabulary {vocab_file}, but data.path "
                         f"was prepared with another one; prepare the data with "
                         f"`python data_prep/prepare.py vocab={vocab_file} ...`")
    return state, config

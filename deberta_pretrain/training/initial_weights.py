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
RUN_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def load_initial_weights(init_from: str, run_config: ModelConfig, data_vocab: dict) -> tuple[dict, ModelConfig]:
    """(state dict, merged model config) of ``init_from``; raises ``ValueError`` when its vocabulary differs from
    the data's (``data_vocab``: the manifest's vocabulary identity)."""
    weights = find_weights_file(resolve_model_path(init_from))
    state, release_config = load_model_state(weights)
    config = merge_configs(release_config, run_config)
    if release_config is not None:  # the checkpoint's architecture wholesale; the run sets only the dropout rates
        fields = release_config.to_dict()
        fields.update({k: v for k, v in run_config.to_dict().items() if k in RUN_FIELDS})
        config = ModelConfig.from_dict(fields)
    config.validate()
    rtd_head = sorted(k for k in state if k.startswith("mask_predictions."))
    if rtd_head:  # a v3 release is an RTD discriminator: its per-token head has no place in an MLM model
        logger.info("model.init_from=%s: its replaced-token-detection head is set aside (%s)", init_from,
                    ", ".join(rtd_head))
        state = {k: v for k, v in state.items() if k not in rtd_head}
    if not any(k.startswith("lm_predictions.") for k in state):
        logger.warning("model.init_from=%s has no MLM head: lm_predictions.lm_head.{dense,LayerNorm,bias} start "
                       "freshly initialised", init_from)
    if hub_name(init_from) and not os.path.exists(init_from):
        vocab_file = resolve_vocab_path(init_from)
    else:
        vocab_file = find_vocab(os.path.dirname(os.path.abspath(weights)))
    if vocab_file is None or not os.path.isfile(vocab_file):
        logger.warning("model.init_from=%s has no vocabulary (spm.model or bpe_encoder.bin) beside its weights: "
                       "cannot check that the data uses its vocabulary", init_from)
        return state, config
    theirs = vocab_identity(load_tokenizer(vocab_file))
    if theirs["sha256"] != data_vocab["sha256"]:
        def describe(identity):
            return f"{identity.get('kind', 'gpt2')}, {identity['size']} ids, sha256 {identity['sha256'][:12]}"

        raise ValueError(f"model.init_from={init_from} was trained with the vocabulary {vocab_file} "
                         f"({describe(theirs)}), but data.path was prepared with another one ({describe(data_vocab)}"
                         f"); prepare the data with `python data_prep/prepare.py vocab={vocab_file} ...`")
    return state, config

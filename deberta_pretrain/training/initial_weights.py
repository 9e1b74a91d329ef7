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


HEADS = {"mlm": ("lm_predictions.", "MLM head: lm_predictions.lm_head.{dense,LayerNorm,bias}"),
         "rtd": ("mask_predictions.", "replaced-token-detection head: mask_predictions.{dense,LayerNorm,classifier}")}


def load_initial_weights(init_from: str, run_config: ModelConfig, data_vocab: dict,
                         head: str = "mlm") -> tuple[dict, ModelConfig]:
    """(state dict, merged model config) of ``init_from`` for a model with ``head`` (``mlm``: an MLM or a
    generator; ``rtd``: a discriminator): the other head's keys are set aside, a missing head is reported. Raises
    ``ValueError`` when its vocabulary differs from the data's (``data_vocab``: the manifest's vocabulary
    identity)."""
    weights = find_weights_file(resolve_model_path(init_from))
    state, release_config = load_model_state(weights)
    config = merge_configs(release_config, run_config)
    if release_config is not None:  # the checkpoint's architecture wholesale; the run sets only the dropout rates
        fields = release_config.to_dict()
        fields.update({k: v for k, v in run_config.to_dict().items() if k in RUN_FIELDS})
        config = ModelConfig.from_dict(fields)
    layers = {int(k.split(".")[3]) for k in state if k.startswith("deberta.encoder.layer.")}
    if layers and len(layers) != config.num_hidden_layers:  # e.g. a generator file beside a discriminator's config
        logger.warning("%s holds %d layers, its config says %d: using %d", init_from, len(layers),
                       config.num_hidden_layers, len(layers))
        config = ModelConfig.from_dict({**config.to_dict(), "num_hidden_layers": len(layers)})
    config.validate()
    own_prefix, own_description = HEADS[head]
    other_prefix, other_description = HEADS["rtd" if head == "mlm" else "mlm"]
    other_head = sorted(k for k in state if k.startswith(other_prefix))
    if other_head:  # e.g. a v3 release is a discriminator: its per-token head has no place in an MLM
        logger.info("%s: its %s is set aside (%s)", init_from, other_description.split(":")[0],
                    ", ".join(other_head))
        state = {k: v for k, v in state.items() if k not in other_head}
    if not any(k.startswith(own_prefix) for k in state):
        logger.warning("%s has no %s start freshly initialised", init_from, own_description)
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

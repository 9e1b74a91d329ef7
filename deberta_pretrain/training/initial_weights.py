"""Continued pretraining: start from released (or exported) weights, or from another run, given by
``model.init_from``.

The release's ``model_config.json`` fixes the shape (the run's ``model.*`` keys still set dropout and the like, as
upstream's config merge does), and its vocabulary must be the one the data was prepared with: otherwise every id
would mean another token, which trains silently into nonsense. A release name downloads weights, config and
vocabulary through the release cache. A run directory (a phase of a multi-phase recipe) gives the weights of its
newest usable checkpoint, consolidated whatever ZeRO stage and process count wrote it; for an RTD run, its
discriminator as the model and its generator as the generator.

Context extension: when the data's blocks are longer than the checkpoint's position table, the table grows to
``model.max_position_embeddings`` by copying the trained rows in order (row ``i`` starts as row ``i mod old``, the
Longformer recipe), keeping the relative-position span the model was trained with; a value too small for the blocks
is refused. Blocks the checkpoint's table covers leave it as it is.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from .. import remote
from ..deberta import ModelConfig
from ..deberta.loading import find_weights_file, load_model_state
from ..deberta.release import hub_name, resolve_model_path, resolve_vocab_path
from ..deberta.vocabulary import find_vocab, load_tokenizer, vocab_identity
from ..layout import names_a_checkpoint
from .checkpoint import TrainedModels, trained_models

logger = logging.getLogger(__name__)
RUN_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


HEADS = {"mlm": ("lm_predictions.", "MLM head: lm_predictions.lm_head.{dense,LayerNorm,bias}"),
         "rtd": ("mask_predictions.", "replaced-token-detection head: mask_predictions.{dense,LayerNorm,classifier}")}


POSITION_TABLE = "deberta.embeddings.position_embeddings.weight"


@functools.lru_cache(maxsize=1)  # an RTD phase reads the discriminator and the generator of one checkpoint
def _trained(path: str) -> TrainedModels:
    return trained_models(path)


def forget_loaded() -> None:
    """Drop the consolidated run weights kept for the next read (the model holds what it needs)."""
    _trained.cache_clear()


def stored_weights(init_from: str, part: str = "model") -> tuple[dict, ModelConfig | None, str | None]:
    """(state, its config if known, vocabulary file) of ``init_from``: a run or one of its checkpoints (``part``:
    ``model``, or ``generator``: an RTD run's generator, an MLM run's model), a release name, an HF folder or an
    export."""
    key = "model.init_from" if part == "model" else "rtd.init_generator"
    if remote.is_remote(init_from):  # an export in object storage: its local copy
        init_from = remote.fetch_export(init_from, key)
    if names_a_checkpoint(os.path.abspath(init_from)):
        try:
            trained = _trained(os.path.abspath(init_from))
        except (OSError, ValueError) as e:
            raise ValueError(f"{key}={init_from}: {str(e).removeprefix('checkpoint: ')}") from e
        models = trained.generator if part == "generator" and trained.generator else trained.model  # MLM: one
        logger.info("%s=%s: the %s of %s (step %d)", key, init_from, "generator" if models is trained.generator
                    else "model", trained.checkpoint, trained.step)
        return models[0], models[1], find_vocab(trained.run_dir)
    try:
        weights = find_weights_file(resolve_model_path(init_from))
        state, config = load_model_state(weights)
    except (OSError, ValueError) as e:
        raise ValueError(f"{key}={init_from}: {e}") from e
    except Exception as e:  # noqa: BLE001 - torch.load of a file that is not a checkpoint raises anything
        raise ValueError(f"{key}={init_from} is not a checkpoint, an export, a model folder or a release name "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if hub_name(init_from) and not os.path.exists(init_from):
        return state, config, resolve_vocab_path(init_from)
    return state, config, find_vocab(os.path.dirname(os.path.abspath(weights)))


def is_rtd_run(init_from: str | None) -> bool:
    """Whether ``init_from`` names a run of objective=rtd (or one of its checkpoints)."""
    if not init_from or remote.is_remote(init_from) or not names_a_checkpoint(os.path.abspath(init_from)):
        return False
    return _trained(os.path.abspath(init_from)).generator is not None


def extend_positions(state: dict, config: ModelConfig, positions: int, length: int | None, key: str, source: str):
    """(state, config) of a checkpoint for blocks of ``length`` tokens: as it is when its position table covers
    them, else extended to the run's ``positions`` (see the module docstring); ``key`` names the setting."""
    have = config.max_position_embeddings
    if length is None or length <= have:
        return state, config
    if positions < length:
        raise ValueError(f"blocks of {length} tokens need more than the {have} positions of {source}: set "
                         f"{key}.max_position_embeddings={length} (or more) to extend its position table, the new "
                         f"rows copied from the trained ones")
    fields = {**config.to_dict(), "max_position_embeddings": positions}
    if config.relative_attention and config.max_relative_positions < 1:
        fields["max_relative_positions"] = have  # the span it was trained with (it defaults to the table's size)
    if POSITION_TABLE in state:
        table = state[POSITION_TABLE]
        state = {**state, POSITION_TABLE: table[torch.arange(positions) % table.shape[0]].clone()}
    logger.warning("%s: %s.max_position_embeddings %d -> %d: rows %d-%d of the position table start as copies of "
                   "rows 0-%d, in order%s", source, key, have, positions, have, positions - 1, have - 1,
                   "; relative positions keep their trained span" if config.relative_attention else "")
    return state, ModelConfig.from_dict(fields)


def load_initial_weights(init_from: str, run_config: ModelConfig, data_vocab: dict, head: str = "mlm",
                         part: str = "model", length: int | None = None) -> tuple[dict, ModelConfig]:
    """(state dict, merged model config) of ``init_from`` for a model with ``head`` (``mlm``: an MLM or a
    generator; ``rtd``: a discriminator): the other head's keys are set aside, a missing head is reported, the
    position table extended to the run's ``max_position_embeddings`` when blocks of ``length`` tokens need more
    than the checkpoint has. ``part``: which model of an RTD run
    (``model`` or ``generator``). Raises ``ValueError`` when its vocabulary differs from the data's
    (``data_vocab``: the manifest's vocabulary identity)."""
    state, release_config, vocab_file = stored_weights(init_from, part)
    config = run_config  # a bare weights file: the run's config describes it
    if release_config is not None:  # the checkpoint's architecture wholesale; the run sets only the dropout rates
        fields = release_config.to_dict()
        fields.update({k: v for k, v in run_config.to_dict().items() if k in RUN_FIELDS})
        config = ModelConfig.from_dict(fields)
        key = "rtd.generator" if part == "generator" else "model"
        state, config = extend_positions(state, config, run_config.max_position_embeddings, length, key, init_from)
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
    if vocab_file is None or not os.path.isfile(vocab_file):
        logger.warning("model.init_from=%s has no vocabulary (spm.model or bpe_encoder.bin) beside its weights: "
                       "cannot check that the data uses its vocabulary", init_from)
        return state, config
    theirs = vocab_identity(load_tokenizer(vocab_file))
    if theirs["sha256"] != data_vocab["sha256"]:
        def describe(identity):
            return f"{identity.get('kind', 'gpt2')}, {identity['size']} ids, sha256 {identity['sha256'][:12]}"

        raise ValueError(f"model.init_from={init_from} was trained with the vocabulary {vocab_file} "
                         f"({describe(theirs)}), but the data was prepared with another one ({describe(data_vocab)}"
                         f"); prepare the data with `python data_prep/prepare.py vocab={vocab_file} ...`")
    return state, config


def objective_with_weights(cfg, model_config: ModelConfig, tokenizer, data_vocab: dict, length: int):
    """The objective of ``cfg`` with the weights the run starts from: ``model.init_from`` for the model (an RTD
    run's discriminator), and for rtd ``rtd.init_generator``, which defaults to the generator of an RTD run named by
    ``model.init_from``; each checked against the data's vocabulary. Raises ``ValueError``."""
    from ..objectives import build_objective  # noqa: PLC0415
    from ..objectives.rtd import generator_config  # noqa: PLC0415

    try:
        state, generator = None, None
        if cfg.model.init_from:
            head = "rtd" if cfg.objective == "rtd" else "mlm"
            state, model_config = load_initial_weights(cfg.model.init_from, model_config, data_vocab, head,
                                                       length=length)
        if cfg.objective == "rtd":
            source = cfg.rtd.init_generator or (cfg.model.init_from if is_rtd_run(cfg.model.init_from) else None)
            if source:
                gen_state, gen_config = load_initial_weights(source, generator_config(cfg, model_config),
                                                             data_vocab, "mlm", "generator", length)
                generator = (gen_state, gen_config)
        return build_objective(cfg, model_config, tokenizer, length, state, generator)
    finally:
        forget_loaded()

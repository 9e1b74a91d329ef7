"""Reading model weights and configs from disk safely (no pickled code), and merging configs as upstream does."""

from __future__ import annotations

import os
import pickle

import torch

from ..layout import GENERATOR_CONFIG, MODEL_CONFIG
from .config import ModelConfig

WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors", "pytorch.model.bin")
CONFIG_FILES = (MODEL_CONFIG, "config.json")
# A config given by the user overrides the checkpoint's, except for the fields that fix the tensor shapes.
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
                "max_position_embeddings")


def load_state_file(path: str) -> dict:
    """Load a state dict from ``.safetensors`` or a torch file with ``weights_only=True``.

    A file that needs arbitrary pickled objects is refused with a ``ValueError`` naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model weights not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file  # noqa: PLC0415

        return dict(load_file(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused to load: the file contains pickled Python objects, which could run "
                         f"arbitrary code. Only tensors, numbers, strings and containers are accepted. ({e})") from e
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def find_weights_file(path: str) -> str:
    """A weights file path, or a directory that holds one of :data:`WEIGHT_FILES`."""
    if os.path.isdir(path):
        for name in WEIGHT_FILES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(f"{path}: no model weights in this directory (looked for {', '.join(WEIGHT_FILES)})")
    return path


def find_config_beside(weights_path: str) -> ModelConfig | None:
    """The config in the weights' folder; for a generator's file (``pytorch_model.generator.bin``, as the v3
    releases ship next to the discriminator) its ``generator_config.json`` first."""
    folder = os.path.dirname(os.path.abspath(weights_path))
    names = CONFIG_FILES
    if "generator" in os.path.basename(weights_path):
        names = (GENERATOR_CONFIG,) + tuple(names)
    for name in names:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return ModelConfig.from_json_file(candidate)
    return None


def load_model_state(path: str) -> tuple[dict, ModelConfig | None]:
    """Weights and config of a local checkpoint: the config comes from ``state['config']`` if present, else from
    ``model_config.json`` (or ``config.json``) beside the weights; ``None`` when neither exists."""
    weights_path = find_weights_file(path)
    state = load_state_file(weights_path)
    config = None
    if "config" in state:
        raw = state.pop("config")
        config = ModelConfig.from_dict(raw if isinstance(raw, dict) else vars(raw))
    if config is None:
        config = find_config_beside(weights_path)
    return to_release_names(state), config


# Hugging Face's legacy MLM head (``legacy=True``, its default) -> the release head; the decoder is the tied word
# embedding matrix and is dropped.
LEGACY_HEAD = (("cls.predictions.transform.dense.", "lm_predictions.lm_head.dense."),
               ("cls.predictions.transform.LayerNorm.", "lm_predictions.lm_head.LayerNorm."),
               ("cls.predictions.bias", "lm_predictions.lm_head.bias"),
               # upstream's RTD head before Dec 2021 misspelt its classifier
               ("mask_predictions.classifer.", "mask_predictions.classifier."))
ENCODER_PREFIXES = ("embeddings.", "encoder.")  # an HF base model (DebertaV2Model) saves its keys bare


def to_release_names(state: dict) -> dict:
    """The key layouts other tools write, renamed to the release's: upstream's early ``bert.*`` and HF base
    models' bare ``embeddings.*``/``encoder.*`` get the ``deberta.`` prefix, HF's legacy ``cls.predictions.*`` head
    becomes ``lm_predictions.lm_head.*``, the RTD head's early ``classifer`` its ``classifier``. Release keys pass
    unchanged."""
    out = {}
    for key, value in state.items():
        if key.startswith("bert."):
            key = "deberta." + key[len("bert."):]
        elif key.startswith(ENCODER_PREFIXES):
            key = "deberta." + key
        elif key.startswith("cls.predictions.decoder."):
            continue
        for old, new in LEGACY_HEAD:
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    return out


def as_model_config(value) -> ModelConfig | None:
    """``None``, a :class:`ModelConfig`, a dict or a JSON file path -> :class:`ModelConfig` (or ``None``)."""
    if value is None or isinstance(value, ModelConfig):
        return value
    if isinstance(value, dict):
        return ModelConfig.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        if not os.path.isfile(value):
            raise FileNotFoundError(f"model config not found: {value}")
        return ModelConfig.from_json_file(value)
    raise TypeError(f"model_config must be a path, dict or ModelConfig, got {type(value).__name__}")


def merge_configs(checkpoint_config: ModelConfig | None, user_config: ModelConfig | None) -> ModelConfig:
    """Upstream rule: the user's config overrides the checkpoint's except for the shape fields, which are
    overridden only where the checkpoint's value is missing or negative."""
    if checkpoint_config is None and user_config is None:
        raise ValueError("no model config: the checkpoint has no 'config' entry and no model_config.json beside it; "
                         "pass model_config=<path to model_config.json>")
    if checkpoint_config is None:
        return user_config
    if user_config is None:
        return checkpoint_config
    merged = checkpoint_config.to_dict()
    for key, value in user_config.to_dict().items():
        current = merged.get(key)
        if key not in SHAPE_FIELDS or current is None or (isinstance(current, int) and current < 0):
            merged[key] = value
    return ModelConfig.from_dict(merged)

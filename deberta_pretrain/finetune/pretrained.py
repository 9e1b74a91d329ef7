"""The encoder a fine-tuning run starts from, whatever the checkpoint: a pretraining run directory or one of its
``checkpoints/step_N`` (any ZeRO stage; an RTD run gives its discriminator), a release or Hugging Face folder (ours
exported, or Microsoft's), or a release name."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ..deberta import ModelConfig
from ..deberta.loading import load_model_state
from ..deberta.release import hub_name, resolve_model_path, resolve_vocab_path
from ..deberta.rtd import merged_tables
from ..deberta.vocabulary import find_vocab, load_tokenizer
from ..training.checkpoint import is_run_directory


@dataclass
class Pretrained:
    state: dict  # release names: deberta.* (heads, if any, are ignored by the classifier)
    config: ModelConfig
    tokenizer: object
    step: int | None  # the pretraining step, when the checkpoint is one of our runs
    where: str  # folder the results go beside


def is_run_checkpoint(path: str) -> bool:
    return is_run_directory(path) or os.path.isfile(os.path.join(path, "complete.json")) \
        or os.path.isfile(os.path.join(path, "latest"))


def load_pretrained(checkpoint: str) -> Pretrained:
    """Raises ``FileNotFoundError``/``ValueError`` naming what is missing."""
    from ..export import consolidated_state_dict, find_checkpoint  # noqa: PLC0415

    path = os.path.abspath(os.fspath(checkpoint))
    if os.path.isdir(path) and is_run_checkpoint(path):
        root, tag, run_dir = find_checkpoint(path)
        state = consolidated_state_dict(root, tag)
        if any(k.startswith("discriminator.") for k in state):
            state = merged_tables(state)[0]
        config = ModelConfig.from_json_file(os.path.join(run_dir, "model_config.json"))
        vocab = find_vocab(run_dir)
        with open(os.path.join(root, tag, "complete.json"), encoding="utf-8") as f:
            step = json.load(f)["step"]
        return Pretrained(state, config, load_tokenizer(vocab), step, run_dir)
    if not os.path.exists(path) and hub_name(checkpoint) is None:
        raise FileNotFoundError(f"checkpoint: {checkpoint} is neither a run directory, a checkpoint, a model folder "
                                f"nor a release name")
    folder = resolve_model_path(checkpoint)
    state, config = load_model_state(folder)
    if config is None:
        raise FileNotFoundError(f"checkpoint: {folder} has no model_config.json or config.json")
    if os.path.isdir(path):
        vocab, where = find_vocab(path), path
    else:
        vocab, where = resolve_vocab_path(checkpoint), os.path.join("outputs", "finetune", str(checkpoint))
    if vocab is None:
        raise FileNotFoundError(f"checkpoint: {folder} has no vocabulary (spm.model or bpe_encoder.bin)")
    state = {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()}
    return Pretrained(state, config, load_tokenizer(vocab), None, where)

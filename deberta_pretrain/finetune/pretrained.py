"""The encoder a fine-tuning run starts from, whatever the checkpoint: a pretraining run directory or one of its
``checkpoints/step_N`` (any ZeRO stage; an RTD run gives its discriminator), a release or Hugging Face folder (ours
exported, or Microsoft's), or a release name."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from .. import remote
from ..deberta import ModelConfig
from ..deberta.loading import load_model_state
from ..deberta.release import hub_name, resolve_model_path, resolve_vocab_path
from ..deberta.vocabulary import find_vocab, load_tokenizer
from ..layout import default_finetune_root, names_a_checkpoint


@dataclass
class Pretrained:
    state: dict  # release names: deberta.* (heads, if any, are ignored by the classifier)
    config: ModelConfig
    tokenizer: object
    step: int | None  # the pretraining step, when the checkpoint is one of our runs
    where: str  # folder the results go beside


def load_pretrained(checkpoint: str) -> Pretrained:
    """Raises ``FileNotFoundError``/``ValueError`` naming what is missing."""
    from ..training.checkpoint import trained_models  # noqa: PLC0415

    if remote.is_remote(checkpoint):  # an export in object storage: its local copy; results under outputs/
        copy = load_pretrained(remote.fetch_export(checkpoint, "checkpoint"))
        return dataclasses.replace(copy, where=default_finetune_root(remote.local_name(checkpoint)))
    path = os.path.abspath(os.fspath(checkpoint))
    if os.path.isdir(path) and names_a_checkpoint(path):
        trained = trained_models(path)  # an RTD run: its discriminator
        state, config = trained.model
        return Pretrained(state, config, load_tokenizer(find_vocab(trained.run_dir)), trained.step, trained.run_dir)
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
        vocab, where = resolve_vocab_path(checkpoint), default_finetune_root(str(checkpoint))
    if vocab is None:
        raise FileNotFoundError(f"checkpoint: {folder} has no vocabulary (spm.model or bpe_encoder.bin)")
    state = {k: v.float() if torch.is_floating_point(v) else v for k, v in state.items()}
    return Pretrained(state, config, load_tokenizer(vocab), None, where)

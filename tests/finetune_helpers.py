"""Running ``run_finetune`` in the test process, as ``launch/finetune.py`` would, on small model folders. A module
that does marks itself ``pytest.mark.usefixtures("single_process_world")`` (conftest.py)."""

from __future__ import annotations

import os

import torch

from conftest import small_config, train_spm
from pretrain_helpers import ROOT


def compose(*overrides):
    """The config ``launch/finetune.py`` composes from conf/ with ``overrides``."""
    from hydra import compose as hydra_compose  # noqa: PLC0415
    from hydra import initialize_config_dir  # noqa: PLC0415

    from deberta_pretrain.finetune.config import register_finetune_configs  # noqa: PLC0415

    register_finetune_configs()
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        return hydra_compose("finetune", overrides=list(overrides))


def finetune(*overrides):
    """run_finetune in this process; the world's variables (RANK, MASTER_PORT ...) it sets are taken back, so that
    no command started later tries to join it."""
    from deberta_pretrain.finetune.suite import run_finetune  # noqa: PLC0415

    environment = dict(os.environ)
    try:
        return run_finetune(compose(*overrides))
    finally:
        os.environ.clear()
        os.environ.update(environment)


def model_folder(folder, vocab_folder, vocab_size: int = 1000, **config) -> str:
    """A randomly initialised v3-style MLM in release format (``small_config`` with ``config``) with a SentencePiece
    vocabulary of ``vocab_size`` pieces trained on the python-help text (small: quick to load)."""
    from deberta_pretrain.deberta import MaskedLanguageModel, ModelConfig, SPMTokenizer  # noqa: PLC0415
    from deberta_pretrain.export import write_model  # noqa: PLC0415

    vocab = train_spm(vocab_folder / "spm.model", vocab_size=vocab_size)
    model_config = ModelConfig.from_dict(small_config("v3", vocab_size=vocab_size, **config))
    torch.manual_seed(0)
    write_model(MaskedLanguageModel(model_config).state_dict(), model_config, SPMTokenizer(str(vocab)), str(folder),
                "release", "fp32")
    return folder

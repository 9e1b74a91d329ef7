"""Pretraining objectives: ``mlm`` (DeBERTa v1) and ``rtd`` (replaced-token detection, DeBERTa v3)."""

from __future__ import annotations

from .base import Objective
from .mlm import MLMObjective
from .rtd import RTDObjective

OBJECTIVES = {"mlm": MLMObjective, "rtd": RTDObjective}

__all__ = ["OBJECTIVES", "MLMObjective", "Objective", "RTDObjective", "build_objective"]


def build_objective(cfg, model_config, tokenizer, vocab: dict, length: int) -> Objective:
    """The objective of ``cfg.objective`` with the weights the run starts from (``model.init_from``, and for rtd
    ``rtd.init_generator``) loaded and checked against the data's vocabulary (``vocab``); raises ``ValueError``."""
    from ..training.initial_weights import load_initial_weights  # noqa: PLC0415

    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"objective: {cfg.objective!r} is not one of {tuple(OBJECTIVES)}")
    initial_state = None
    head = "rtd" if cfg.objective == "rtd" else "mlm"
    if cfg.model.init_from:
        initial_state, model_config = load_initial_weights(cfg.model.init_from, model_config, vocab, head)
    if cfg.objective == "mlm":
        return MLMObjective(cfg, model_config, tokenizer, initial_state, length)
    from .rtd import generator_config  # noqa: PLC0415

    gen_config, gen_state = generator_config(cfg, model_config), None
    if cfg.rtd.init_generator:
        gen_state, gen_config = load_initial_weights(cfg.rtd.init_generator, gen_config, vocab, "mlm")
    return RTDObjective(cfg, model_config, tokenizer, initial_state, length, gen_state, gen_config)

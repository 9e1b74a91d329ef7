"""Pretraining objectives: ``mlm`` (DeBERTa v1) and ``rtd`` (replaced-token detection, DeBERTa v3)."""

from __future__ import annotations

from .base import Objective
from .mlm import MLMObjective
from .rtd import RTDObjective

OBJECTIVES = {"mlm": MLMObjective, "rtd": RTDObjective}

__all__ = ["OBJECTIVES", "MLMObjective", "Objective", "RTDObjective", "build_objective"]


def build_objective(cfg, model_config, tokenizer, vocab: dict, length: int) -> Objective:
    """The objective of ``cfg.objective`` with the weights the run starts from (``model.init_from``, and for rtd
    ``rtd.init_generator``, which defaults to the generator of an RTD run named by ``model.init_from``) loaded and
    checked against the data's vocabulary (``vocab``); raises ``ValueError``."""
    from ..training import initial_weights  # noqa: PLC0415

    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"objective: {cfg.objective!r} is not one of {tuple(OBJECTIVES)}")
    try:
        initial_state = None
        head = "rtd" if cfg.objective == "rtd" else "mlm"
        if cfg.model.init_from:
            initial_state, model_config = initial_weights.load_initial_weights(cfg.model.init_from, model_config,
                                                                               vocab, head)
        if cfg.objective == "mlm":
            return MLMObjective(cfg, model_config, tokenizer, initial_state, length)
        from .rtd import generator_config  # noqa: PLC0415

        gen_config, gen_state = generator_config(cfg, model_config), None
        if cfg.rtd.init_generator:
            gen_state, gen_config = initial_weights.load_initial_weights(cfg.rtd.init_generator, gen_config, vocab,
                                                                         "mlm", "generator")
        elif initial_weights.is_rtd_run(cfg.model.init_from):
            gen_state, gen_config = initial_weights.load_initial_weights(cfg.model.init_from, gen_config, vocab,
                                                                         "mlm", "generator")
        return RTDObjective(cfg, model_config, tokenizer, initial_state, length, gen_state, gen_config)
    finally:
        initial_weights.forget_loaded()

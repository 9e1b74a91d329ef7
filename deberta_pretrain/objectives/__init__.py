"""Pretraining objectives: ``mlm`` (DeBERTa v1) and ``rtd`` (replaced-token detection, DeBERTa v3)."""

from __future__ import annotations

from .base import Objective
from .mlm import MLMObjective
from .rtd import RTDObjective

OBJECTIVES = {"mlm": MLMObjective, "rtd": RTDObjective}

__all__ = ["OBJECTIVES", "MLMObjective", "Objective", "RTDObjective", "build_objective"]


def build_objective(cfg, model_config, tokenizer, length: int, initial_state: dict | None = None,
                    generator: tuple | None = None) -> Objective:
    """The objective ``cfg.objective`` names (:data:`OBJECTIVES`) for a model of ``model_config`` over blocks of
    ``length`` tokens, starting from ``initial_state`` (None: freshly initialised) and, for rtd, from ``generator``
    (``(state, config)`` of the generator, or None: half the discriminator's depth, freshly initialised). Loading
    those weights is the trainer's (``training.initial_weights``)."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"objective: {cfg.objective!r} is not one of {tuple(OBJECTIVES)}")
    return OBJECTIVES[cfg.objective](cfg, model_config, tokenizer, length, initial_state, generator)

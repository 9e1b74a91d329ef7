"""Moved to :mod:`deberta_pretrain.data.inputs` (data prep's inputs). Only ``python_help_topics`` is left here, for
``deberta_pretrain/finetune/data.py`` until it imports it from ``deberta_pretrain.data.inputs``; then delete this."""

from .inputs.python_help import python_help_topics

__all__ = ["python_help_topics"]

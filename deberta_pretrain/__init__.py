"""deberta_pretrain: DeBERTa MLM pretraining under DeepSpeed, with release-compatible checkpoints."""

__version__ = "0.1.0"

"""Prepared training data: the shard reader, the step sampler and MLM masking (data prep lives in ``prepare``)."""

from .shards import MANIFEST, VOCAB_FILE, DataError, ShardedDataset

__all__ = ["DataError", "MANIFEST", "ShardedDataset", "VOCAB_FILE"]

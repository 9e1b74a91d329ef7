"""The DeBERTa model with the upstream (seed document) API and release parameter names."""

from .attention import ATTENTION_BACKENDS, DisentangledSelfAttention, set_attention_backend
from .bert import BertEmbeddings, BertEncoder, BertLayer, ConvLayer
from .config import ModelConfig, PoolConfig
from .deberta import DeBERTa
from .gpt2_tokenizer import GPT2Tokenizer
from .mlm import BertLMPredictionHead, EnhancedMaskDecoder, MaskedLanguageModel
from .nnmodule import NNModule
from .ops import BertLayerNorm, MaskedLayerNorm, StableDropout, XSoftmax
from .pooling import ContextPooler, SequenceClassificationModel
from .relative_position import build_relative_position, make_log_bucket_position
from .spm_tokenizer import SPMTokenizer

__all__ = [
    "ATTENTION_BACKENDS", "BertEmbeddings", "BertEncoder", "BertLayer", "BertLayerNorm", "BertLMPredictionHead",
    "ContextPooler", "ConvLayer", "DeBERTa", "DisentangledSelfAttention", "EnhancedMaskDecoder", "GPT2Tokenizer",
    "MaskedLanguageModel", "MaskedLayerNorm", "ModelConfig", "NNModule", "PoolConfig",
    "SequenceClassificationModel", "SPMTokenizer", "StableDropout", "XSoftmax", "build_relative_position",
    "make_log_bucket_position", "set_attention_backend",
]

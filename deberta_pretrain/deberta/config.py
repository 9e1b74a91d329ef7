"""Model configuration: the upstream ``ModelConfig`` schema (v1 fields plus the v2/v3 ones) and ``PoolConfig``.

The JSON form is the release ``model_config.json`` schema, so a config written here loads into the original
DeBERTa code and into Hugging Face's ``DebertaConfig``/``DebertaV2Config``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

# Field -> default. The defaults are upstream's (``DeBERTa/deberta/config.py`` and the seed document).
_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-7,
    "vocab_size": -1,
    "padding_idx": 0,
    "relative_attention": False,
    "max_relative_positions": -1,
    "position_biased_input": True,
    "pos_att_type": "",
    # v2/v3 fields
    "position_buckets": -1,
    "share_att_key": False,
    "norm_rel_ebd": "none",
    "conv_kernel_size": 0,
    "conv_act": "tanh",
    "conv_groups": 1,
    "attention_head_size": None,
    "embedding_size": None,
    "talking_head": False,
}

POS_ATT_TYPES = ("c2p", "p2c", "p2p")
ACTIVATIONS = ("gelu", "relu", "swish", "silu", "tanh", "gelu_new")
V1, V2 = "deberta", "deberta-v2"


def parse_pos_att_type(value) -> list[str]:
    """``"c2p|p2c"``, ``["c2p", "p2c"]``, ``None`` or ``"none"`` -> list of lower-case tokens (validated)."""
    if value is None:
        return []
    if isinstance(value, str):
        tokens = [t.strip().lower() for t in value.split("|")]
    else:
        tokens = [str(t).strip().lower() for t in value]
    tokens = [t for t in tokens if t and t != "none"]
    for t in tokens:
        if t not in POS_ATT_TYPES:
            raise ValueError(f"pos_att_type: unknown token {t!r} in {value!r}; allowed: {'|'.join(POS_ATT_TYPES)}")
    return tokens


class ModelConfig:
    """Configuration of a DeBERTa encoder, with upstream field names and defaults.

    Every field of :data:`_DEFAULTS` is an attribute; unknown keys given to :meth:`from_dict` are kept as
    attributes too (upstream behaviour: e.g. ``pooling`` for :class:`PoolConfig`). ``pos_att_type`` is stored
    as a list of tokens and serialised as the upstream ``"c2p|p2c"`` string.

    ``model_type`` selects the parameter layout: ``"deberta"`` (v1 release names: ``in_proj``, ``q_bias``...)
    or ``"deberta-v2"`` (``query_proj``...). When absent it is inferred: a config that uses any v2/v3 feature
    (position buckets, shared attention keys, relative-embedding LayerNorm, conv layer, attention_head_size)
    is v2, otherwise v1.
    """

    def __init__(self, **kwargs):
        for key, value in copy.deepcopy(_DEFAULTS).items():
            setattr(self, key, value)
        self.model_type = None
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.pos_att_type = parse_pos_att_type(self.pos_att_type)
        if self.model_type is None:
            self.model_type = V2 if self._uses_v2_features() else V1

    def _uses_v2_features(self) -> bool:
        return (
            (self.position_buckets or 0) > 0
            or bool(self.share_att_key)
            or "layer_norm" in str(self.norm_rel_ebd).lower()
            or (self.conv_kernel_size or 0) > 0
            or self.attention_head_size is not None
        )

    # ---- derived values -------------------------------------------------------------------------------
    @property
    def is_v2(self) -> bool:
        return self.model_type == V2

    @property
    def head_size(self) -> int:
        return self.attention_head_size or self.hidden_size // self.num_attention_heads

    @property
    def embed_size(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def relative_span(self) -> int:
        """Number of relative distances on each side: ``position_buckets`` if >0, else ``max_relative_positions``
        (which itself defaults to ``max_position_embeddings``)."""
        if (self.position_buckets or 0) > 0:
            return self.position_buckets
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def max_relative_distance(self) -> int:
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    # ---- validation ---------------------------------------------------------------------------------
    def validate(self) -> "ModelConfig":
        """Raise ``ValueError`` naming the offending field if the config cannot build a model."""
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "vocab_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        for key in ("type_vocab_size",):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        for key in ("embedding_size", "attention_head_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{key} must be a positive integer or null, got {value!r}")
        if self.attention_head_size is None and self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads})")
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {value!r}")
        if self.initializer_range < 0:
            raise ValueError(f"initializer_range must be >= 0, got {self.initializer_range!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act: unknown activation {self.hidden_act!r}; allowed: {ACTIVATIONS}")
        if (self.conv_kernel_size or 0) > 0 and self.conv_act not in ACTIVATIONS:
            raise ValueError(f"conv_act: unknown activation {self.conv_act!r}; allowed: {ACTIVATIONS}")
        if self.model_type not in (V1, V2):
            raise ValueError(f"model_type must be {V1!r} or {V2!r}, got {self.model_type!r}")
        if self.model_type == V1 and self._uses_v2_features():
            raise ValueError("model_type 'deberta' (v1 layout) cannot use position_buckets, share_att_key, "
                             "norm_rel_ebd, conv_kernel_size or attention_head_size; use model_type 'deberta-v2'")
        if self.relative_attention and self.position_buckets > 0 and self.position_buckets < 2:
            raise ValueError(f"position_buckets must be >= 2 or <= 0, got {self.position_buckets}")
        parse_pos_att_type(self.pos_att_type)
        return self

    # ---- (de)serialisation -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, json_object: dict) -> "ModelConfig":
        """Build a config from a dict in the ``model_config.json`` schema (unknown keys are kept)."""
        if not isinstance(json_object, dict):
            raise ValueError(f"model config must be a dict, got {type(json_object).__name__}")
        return cls(**json_object)

    @classmethod
    def from_json_file(cls, json_file) -> "ModelConfig":
        """Read a ``model_config.json`` (or an HF ``config.json``)."""
        try:
            with open(json_file, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}: not valid JSON ({e})") from e
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """The release schema: every field that is set (``None`` fields are left out, as in the release files),
        ``pos_att_type`` as a ``"c2p|p2c"`` string."""
        out = {}
        for key, value in self.__dict__.items():
            if key.startswith("_") or value is None:
                continue
            out[key] = copy.deepcopy(value)
        out["pos_att_type"] = "|".join(self.pos_att_type) if self.pos_att_type else "none"
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __repr__(self):
        return f"{type(self).__name__}({self.to_json_string()})"

    def __eq__(self, other):
        return isinstance(other, ModelConfig) and self.to_dict() == other.to_dict()


class PoolConfig:
    """Configuration of the pooling layer (:class:`ContextPooler`).

    Fields ``hidden_size`` (768), ``dropout`` (0) and ``hidden_act`` (``gelu``); taken from the ``pooling``
    entry of a model config when present, with ``hidden_size`` falling back to the model's.
    """

    def __init__(self, config: ModelConfig | None = None):
        self.hidden_size = 768
        self.dropout = 0.0
        self.hidden_act = "gelu"
        if config is not None:
            pool = getattr(config, "pooling", None) or {}
            if not isinstance(pool, dict):
                pool = pool.__dict__
            self.hidden_size = pool.get("hidden_size", config.hidden_size)
            self.dropout = pool.get("dropout", 0.0)
            self.hidden_act = pool.get("hidden_act", "gelu")

    def to_dict(self) -> dict:
        return dict(self.__dict__)

"""The structured schema of the pretraining config (``conf/pretrain.yaml``), registered with Hydra's ConfigStore.

Hydra merges the YAML groups into these dataclasses, so a misspelt key or a value of the wrong type fails when the
config is composed, before anything runs, with a message that names the key. Cross-field checks that a type
cannot express live in :func:`validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

PRECISIONS = ("fp32", "bf16", "fp16")
MASKING = ("token", "whole_word", "span")
SCHEDULES = ("linear", "cosine", "constant")
WANDB_MODES = ("offline", "online", "disabled")
# The model's choices (deberta_pretrain.deberta.attention), repeated so that this module does not import torch.
ATTENTION_BACKENDS = ("eager", "sdpa", "flash", "auto")


@dataclass
class ModelSchema:
    """Model shape (the ``ModelConfig`` fields, release schema) plus how to run it."""

    model_type: Optional[str] = None
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-7
    vocab_size: int = 50265
    padding_idx: int = 0
    relative_attention: bool = True
    max_relative_positions: int = -1
    position_biased_input: bool = False
    pos_att_type: str = "p2c|c2p"
    position_buckets: int = -1
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    conv_kernel_size: int = 0
    conv_act: str = "tanh"
    conv_groups: int = 1
    attention_head_size: Optional[int] = None
    embedding_size: Optional[int] = None
    talking_head: bool = False
    # how to run it (not part of the release config)
    attention_backend: str = "auto"  # eager | sdpa | flash (opt-in, GPU) | auto (= sdpa for now)
    use_emd: Optional[bool] = None  # null: upstream rule, EMD iff position_biased_input is false
    gradient_checkpointing: bool = False
    init_from: Optional[str] = None  # a release directory/name to continue pretraining from


@dataclass
class DataSchema:
    path: str = MISSING  # a directory written by data_prep/prepare.py
    max_seq_length: Optional[int] = None  # must equal the prepared block length when set
    masking: str = "token"  # token | whole_word | span (n-gram)
    mask_prob: float = 0.15
    max_ngram: int = 3  # span masking: n-gram length n in [1, max_ngram], p ~ 1/n
    max_predictions: Optional[int] = None  # per sequence; null: ceil(0.15 * L / 10) * 10 as upstream
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    num_workers: int = 0
    verify: str = "full"  # full | size | none: shard checks at start-up
    stage_dir: Optional[str] = None  # node-local directory to copy the data to before training (multi-node)
    document_attention: bool = False  # packed documents attend only within themselves, positions restart


@dataclass
class TrainSchema:
    max_steps: int = 1000
    global_batch_size: int = 256
    micro_batch_size: int = 32
    checkpoint_every: int = 1000
    eval_every: int = 1000
    eval_samples: int = 2048  # validation blocks per evaluation (fixed masks)
    keep_last: int = 2
    log_every: int = 10
    gradient_clipping: float = 1.0
    on_nonfinite: str = "stop"  # stop | skip: what a non-finite training loss does (bf16/fp32)


@dataclass
class OptimSchema:
    lr: float = 1e-4
    warmup_steps: int = 10000
    schedule: str = "linear"  # linear (upstream warmup_linear) | cosine | constant
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6


@dataclass
class DeepSpeedSchema:
    zero_stage: int = 0
    offload: bool = False  # ZeRO offload of optimizer state (and parameters at stage 3) to CPU memory
    extra: dict = field(default_factory=dict)  # merged into the generated DeepSpeed config as is


@dataclass
class WandbSchema:
    mode: str = "offline"
    project: str = "deberta_pretrain"
    entity: Optional[str] = None
    tags: list = field(default_factory=list)


@dataclass
class LoggingSchema:
    wandb: WandbSchema = field(default_factory=WandbSchema)
    peak_tflops: Optional[float] = None  # per device, for MFU; null: from the table of known GPUs
    progress_bar: bool = True


@dataclass
class PretrainSchema:
    name: str = MISSING
    output_root: str = "outputs"
    seed: int = 42
    precision: str = "bf16"
    model: ModelSchema = field(default_factory=ModelSchema)
    data: DataSchema = field(default_factory=DataSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    deepspeed: DeepSpeedSchema = field(default_factory=DeepSpeedSchema)
    logging: LoggingSchema = field(default_factory=LoggingSchema)


def register_configs() -> None:
    ConfigStore.instance().store(name="pretrain_schema", node=PretrainSchema)


def validate(cfg) -> None:
    """Checks across fields; raises ``ValueError`` naming the key."""
    def choice(key, value, allowed):
        if value not in allowed:
            raise ValueError(f"{key}: {value!r} is not one of {allowed}")

    choice("precision", cfg.precision, PRECISIONS)
    choice("data.masking", cfg.data.masking, MASKING)
    choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    choice("logging.wandb.mode", cfg.logging.wandb.mode, WANDB_MODES)
    choice("deepspeed.zero_stage", cfg.deepspeed.zero_stage, (0, 1, 2, 3))
    choice("data.verify", cfg.data.verify, ("full", "size", "none"))
    choice("model.attention_backend", cfg.model.attention_backend, ATTENTION_BACKENDS)
    for key in ("train.max_steps", "train.global_batch_size", "train.micro_batch_size", "train.checkpoint_every",
                "train.eval_every", "train.log_every", "train.keep_last"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(getattr(cfg, section), name)}")
    choice("train.on_nonfinite", cfg.train.on_nonfinite, ("stop", "skip"))
    if cfg.train.on_nonfinite == "skip" and cfg.precision != "fp16" and not (
            cfg.deepspeed.zero_stage in (1, 2) or (cfg.deepspeed.zero_stage == 3 and cfg.precision == "bf16")):
        raise ValueError(f"train.on_nonfinite=skip drops an update through DeepSpeed's check of the gradients, which "
                         f"runs at deepspeed.zero_stage 1 or 2, or 3 with bf16 (this run: zero_stage="
                         f"{cfg.deepspeed.zero_stage}, precision={cfg.precision}); use train.on_nonfinite=stop or "
                         f"another stage")
    if not 0 < cfg.data.mask_prob < 1:
        raise ValueError(f"data.mask_prob must be in (0, 1), got {cfg.data.mask_prob}")
    if cfg.data.mask_token_prob + cfg.data.random_token_prob > 1:
        raise ValueError("data.mask_token_prob + data.random_token_prob must be <= 1")
    if cfg.optim.lr <= 0:
        raise ValueError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.optim.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps must be >= 0, got {cfg.optim.warmup_steps}")
    if not cfg.name or "/" in cfg.name:
        raise ValueError(f"name must be a non-empty directory name, got {cfg.name!r}")

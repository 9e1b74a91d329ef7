"""The structured schema of the pretraining config (``conf/pretrain.yaml``), registered with Hydra's ConfigStore.

Hydra merges the YAML groups into these dataclasses, so a misspelt key or a value of the wrong type fails when the
config is composed, before anything runs, with a message that names the key. Cross-field checks that a type
cannot express live in :func:`validate`. The schema holds types; the values (defaults) come from the YAML files
only, so there is one place to read and change them. The model fields are the exception: their defaults are the
release schema's (``ModelConfig``), which the model YAMLs override field by field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .choices import ATTENTION_BACKENDS, EMBEDDING_SHARING, PRECISIONS, WANDB_MODES, ZERO_STAGES
from .config_keys import check_keys
from .data.corpus import configured_sources
from .data.inputs import INPUTS, input_type
from .data.mixture import check_alpha
from .data.streaming import parse_size

MASKING = ("token", "whole_word", "span")
SCHEDULES = ("linear", "cosine", "constant", "wsd")
DECAY_SHAPES = ("linear", "sqrt", "cosine")  # of the wsd schedule's decay


@dataclass
class ModelSchema:
    """Model shape (the ``ModelConfig`` fields with upstream's defaults, release schema) and the weights to start
    from. A test keeps these defaults equal to ``ModelConfig``'s (this module does not import torch)."""

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
    vocab_size: int = -1
    padding_idx: int = 0
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_biased_input: bool = True
    pos_att_type: str = ""
    position_buckets: int = -1
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    conv_kernel_size: int = 0
    conv_act: str = "tanh"
    conv_groups: int = 1
    attention_head_size: Optional[int] = None
    embedding_size: Optional[int] = None
    talking_head: bool = False
    # where the weights come from (not part of the release config): a release, an HF folder, an export
    init_from: Optional[str] = None


@dataclass
class ImplSchema:
    """How the model runs (conf/impl/default.yaml): free to change between restarts of a run."""

    attention_backend: str = MISSING
    use_emd: Optional[bool] = MISSING
    gradient_checkpointing: bool = MISSING
    compile: bool = MISSING


@dataclass
class DataSourceSchema:
    """One entry of ``data.sources``."""

    path: str = MISSING  # a directory written by data_prep/prepare.py
    weight: Optional[float] = None  # share of the samples (normalised); null for every source: from sizes and alpha


@dataclass
class DataSchema:
    path: Optional[str] = MISSING  # a directory written by data_prep/prepare.py (one source)
    sources: Any = MISSING  # a mixture: {name: {path, weight}} (DataSourceSchema)
    alpha: float = MISSING  # shares of sources without weights ~ tokens ** alpha
    max_seq_length: Optional[int] = MISSING  # must equal the prepared block length when set
    masking: str = MISSING  # token | whole_word | span (n-gram)
    mask_prob: float = MISSING
    max_ngram: int = MISSING  # span masking: n-gram length n in [1, max_ngram], p ~ 1/n
    max_predictions: Optional[int] = MISSING  # per sequence; null: ceil(0.15 * L / 10) * 10 as upstream
    mask_token_prob: float = MISSING
    random_token_prob: float = MISSING
    num_workers: int = MISSING
    verify: str = MISSING  # full | size | none: shard checks at start-up
    stage_dir: Optional[str] = MISSING  # node-local directory to copy the data to before training (multi-node)
    document_attention: bool = MISSING  # packed documents attend only within themselves, positions restart
    cache_limit: Any = MISSING  # data in object storage: stream training shards through this many bytes (or "2GB")
    shuffle_window: Optional[int] = MISSING  # shards per window of the shuffle; null: the whole dataset


@dataclass
class TrainSchema:
    max_steps: int = MISSING
    global_batch_size: int = MISSING
    micro_batch_size: int = MISSING
    checkpoint_every: int = MISSING
    eval_every: int = MISSING
    eval_samples: int = MISSING  # validation blocks per evaluation (fixed masks)
    keep_last: int = MISSING
    log_every: int = MISSING
    gradient_clipping: float = MISSING
    on_nonfinite: str = MISSING  # stop | skip: what a non-finite training loss does (bf16/fp32)
    init_optimizer: bool = MISSING  # with model.init_from=<run>: start from its AdamW moments too
    remote_dir: Optional[str] = MISSING  # object storage (s3://bucket/runs) the run directory is mirrored to
    fork_from: Optional[str] = MISSING  # a new run from another run's checkpoint, in its exact state


@dataclass
class OptimSchema:
    lr: float = MISSING
    warmup_steps: int = MISSING
    schedule: str = MISSING  # linear (upstream warmup_linear) | cosine | constant | wsd
    end_lr_ratio: float = MISSING
    decay_steps: Optional[int] = MISSING  # wsd: the decay's length, at the end of train.max_steps
    decay_shape: str = MISSING  # wsd: linear | sqrt (1 - sqrt(t)) | cosine
    weight_decay: float = MISSING
    beta1: float = MISSING
    beta2: float = MISSING
    eps: float = MISSING


@dataclass
class DeepSpeedSchema:
    zero_stage: int = MISSING
    offload: bool = MISSING  # ZeRO offload of optimizer state (and parameters at stage 3) to CPU memory
    extra: dict = field(default_factory=dict)  # merged into the generated DeepSpeed config as is


@dataclass
class WandbSchema:
    mode: str = MISSING
    project: str = MISSING
    entity: Optional[str] = MISSING
    tags: list = field(default_factory=list)


@dataclass
class LoggingSchema:
    wandb: WandbSchema = field(default_factory=WandbSchema)
    peak_tflops: Optional[float] = MISSING  # per device, for MFU; null: from the table of known GPUs
    progress_bar: bool = MISSING


RTD_KEYS = {"lambda": (int, float), "temperature": (int, float), "embedding_sharing": str,
            "discriminator_lr": (int, float, type(None)), "init_generator": (str, type(None)), "generator": dict}


@dataclass
class PretrainSchema:
    name: str = MISSING
    output_root: str = MISSING
    seed: int = MISSING
    precision: str = MISSING
    objective: str = MISSING  # mlm | rtd (conf/objective/*.yaml)
    rtd: dict = field(default_factory=dict)  # objective=rtd settings; defaults and meanings: conf/objective/rtd.yaml
    model: ModelSchema = field(default_factory=ModelSchema)
    impl: ImplSchema = field(default_factory=ImplSchema)
    data: DataSchema = field(default_factory=DataSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    deepspeed: DeepSpeedSchema = field(default_factory=DeepSpeedSchema)
    logging: LoggingSchema = field(default_factory=LoggingSchema)


def register_configs() -> None:
    ConfigStore.instance().store(name="pretrain_schema", node=PretrainSchema)


def validate_wsd(optim, max_steps: int) -> None:
    """optim.schedule=wsd: a decay of optim.decay_steps that fits after the warm-up within train.max_steps."""
    if optim.decay_shape not in DECAY_SHAPES:
        raise ValueError(f"optim.decay_shape: {optim.decay_shape!r} is not one of {DECAY_SHAPES}")
    decay = optim.decay_steps
    if not isinstance(decay, int) or isinstance(decay, bool) or decay < 1:
        raise ValueError(f"optim.schedule=wsd needs optim.decay_steps, the length of the final decay (an integer >= "
                         f"1, e.g. {max(1, max_steps // 10)} for 10 % of train.max_steps), got {decay!r}")
    if optim.warmup_steps + decay > max_steps:
        raise ValueError(f"optim.warmup_steps ({optim.warmup_steps}) + optim.decay_steps ({decay}) exceed "
                         f"train.max_steps ({max_steps}): the wsd schedule has no room to decay after its warm-up")


def validate(cfg) -> None:
    """Checks across fields; raises ``ValueError`` naming the key."""
    def choice(key, value, allowed):
        if value not in allowed:
            raise ValueError(f"{key}: {value!r} is not one of {allowed}")

    check_pretrain_keys(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"no value for {', '.join(missing)} (every key needs one in conf/ or on the command line)")
    choice("precision", cfg.precision, PRECISIONS)
    from .objectives import OBJECTIVES  # noqa: PLC0415  (the model: torch, imported by pretraining anyway)

    choice("objective", cfg.objective, tuple(OBJECTIVES))
    if cfg.objective == "rtd":
        validate_rtd(cfg.rtd)
    configured_sources(cfg.data)
    check_alpha(cfg.data.alpha)
    choice("data.masking", cfg.data.masking, MASKING)
    choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    if cfg.optim.schedule == "wsd":
        validate_wsd(cfg.optim, cfg.train.max_steps)
    choice("logging.wandb.mode", cfg.logging.wandb.mode, WANDB_MODES)
    choice("deepspeed.zero_stage", cfg.deepspeed.zero_stage, ZERO_STAGES)
    choice("data.verify", cfg.data.verify, ("full", "size", "none"))
    if cfg.data.cache_limit is not None:
        parse_size(cfg.data.cache_limit)
    window = cfg.data.shuffle_window
    if window is not None and window < 1:
        raise ValueError(f"data.shuffle_window must be a number of shards >= 1 (or null: one window over the whole "
                         f"dataset), got {window}")
    choice("impl.attention_backend", cfg.impl.attention_backend, ATTENTION_BACKENDS)
    for key in ("train.max_steps", "train.global_batch_size", "train.micro_batch_size", "train.checkpoint_every",
                "train.eval_every", "train.log_every", "train.keep_last"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(getattr(cfg, section), name)}")
    choice("train.on_nonfinite", cfg.train.on_nonfinite, ("stop", "skip"))
    if cfg.train.remote_dir and "://" not in cfg.train.remote_dir:
        raise ValueError(f"train.remote_dir must be a URL of object storage such as s3://bucket/runs, got "
                         f"{cfg.train.remote_dir!r}")
    if cfg.train.fork_from and (cfg.model.init_from or cfg.train.init_optimizer):
        raise ValueError("train.fork_from continues another run's exact state (weights, optimizer, schedule, data "
                         "position); model.init_from and train.init_optimizer start a new phase from its weights: "
                         "give one or the other")
    if cfg.train.init_optimizer and not cfg.model.init_from:
        raise ValueError("train.init_optimizer=true carries the optimizer state of the run that model.init_from "
                         "names, but model.init_from is not set")
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


def check_pretrain_keys(cfg) -> None:
    """Unknown keys of a pretraining config, ``rtd.*`` and ``rtd.generator.*`` included."""
    sources = OmegaConf.select(cfg, "data.sources") or {}
    check_keys(cfg, PretrainSchema, {"rtd": tuple(RTD_KEYS), "rtd.generator": ModelSchema,
                                     "data.sources": tuple(sources),
                                     **{f"data.sources.{name}": DataSourceSchema for name in sources}})


def validate_rtd(rtd) -> None:
    """The ``rtd.*`` keys (a free-form mapping in the schema because ``lambda`` is a Python keyword)."""
    missing = sorted(set(RTD_KEYS) - set(rtd))  # unknown keys were named by check_keys
    if missing:
        raise ValueError(f"rtd: no value for {missing} (see conf/objective/rtd.yaml)")
    for key, types in RTD_KEYS.items():
        value = rtd[key]
        if key == "generator":
            if value is not None and not hasattr(value, "keys"):
                raise ValueError(f"rtd.generator must be a mapping of model keys, got {value!r}")
        elif not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(f"rtd.{key}: {value!r} has the wrong type")
    if rtd["embedding_sharing"] not in EMBEDDING_SHARING:
        raise ValueError(f"rtd.embedding_sharing: {rtd['embedding_sharing']!r} is not one of {EMBEDDING_SHARING}")
    for key in ("lambda", "temperature"):
        if rtd[key] <= 0:
            raise ValueError(f"rtd.{key} must be > 0, got {rtd[key]}")
    if rtd["discriminator_lr"] is not None and rtd["discriminator_lr"] <= 0:
        raise ValueError(f"rtd.discriminator_lr must be > 0 or null, got {rtd['discriminator_lr']}")


# ---- data prep (conf/data_prep/): prepare.py and train_tokenizer.py -------------------------------------------
# the schema of each input=<type> is its input type's dataclass (deberta_pretrain/data/inputs/, INPUTS)
@dataclass
class PrepareSchema:
    input: Any = MISSING  # one of INPUTS (conf/data_prep/input/)
    output: str = MISSING
    vocab: Optional[str] = MISSING
    tokenizer: Optional[str] = MISSING
    engine: str = MISSING
    max_seq_length: int = MISSING
    packing: str = MISSING
    validation_fraction: float = MISSING
    segment_mb: float = MISSING
    num_proc: int = MISSING
    overwrite: bool = MISSING


@dataclass
class TrainTokenizerSchema:
    input: Any = MISSING  # one of INPUTS (conf/data_prep/input/)
    output: str = MISSING
    kind: str = MISSING
    vocab_size: int = MISSING
    sample_mb: float = MISSING
    held_out_fraction: float = MISSING
    character_coverage: float = MISSING
    num_threads: int = MISSING
    seed: int = MISSING
    overwrite: bool = MISSING


def check_data_prep_keys(cfg, schema) -> None:
    """Unknown keys of a data-prep config (``PrepareSchema`` or ``TrainTokenizerSchema``), its input included."""
    check_keys(cfg, schema, {"input": input_type(OmegaConf.select(cfg, "input") or {})})


def refuse_source_overrides(overrides) -> None:
    """Data prep's input was the config group ``source`` before it became ``input``: an override of the old name
    (``source=text``, ``source.paths=...``, with ``+`` or ``~`` too) stops with one line and exit status 1 instead of
    Hydra's error about a group it does not know. Entry points call it on ``sys.argv[1:]`` before Hydra parses it."""
    old = [o for o in overrides if re.match(r"[+~]*source([.=@]|$)", o)]
    if old:
        new = " ".join(re.sub(r"^([+~]*)source", r"\1input", o, count=1) for o in old)
        raise SystemExit(f"error: data prep's input is now the config group input (source names the datasets of a "
                         f"pretraining mixture): write {new}")


def register_data_prep_configs() -> None:
    """The schemas of ``conf/data_prep/*.yaml`` and of each ``input`` option (a misspelt key fails by name)."""
    store = ConfigStore.instance()
    store.store(name="prepare_schema", node=PrepareSchema)
    store.store(name="train_tokenizer_schema", node=TrainTokenizerSchema)
    for name, node in INPUTS.items():
        store.store(group="input", name=f"{name}_schema", node=node)


# ---- the tools: export, plot, build_vocab (conf/export.yaml, conf/plot.yaml, conf/data_prep/build_vocab.yaml) -----
@dataclass
class ExportSchema:
    checkpoint: str = MISSING
    output: str = MISSING
    format: str = MISSING
    dtype: str = MISSING
    overwrite: bool = MISSING
    license: Optional[str] = MISSING


@dataclass
class PlotSchema:
    run: str = MISSING
    out: Optional[str] = MISSING
    compare: Optional[Any] = MISSING  # other runs drawn with this one in compare.png


@dataclass
class BuildVocabSchema:
    output: str = MISSING
    encoder_json: Optional[str] = MISSING
    vocab_bpe: Optional[str] = MISSING
    dict_txt: Optional[str] = MISSING
    overwrite: bool = MISSING


TOOL_SCHEMAS = {"export": ExportSchema, "plot": PlotSchema, "build_vocab": BuildVocabSchema}


def register_tool_configs() -> None:
    for name, node in TOOL_SCHEMAS.items():
        ConfigStore.instance().store(name=f"{name}_schema", node=node)


def check_tool_config(cfg, tool: str) -> None:
    """Unknown keys (``+key`` too, with the nearest valid key) and keys without a value, as a ``ValueError``."""
    check_keys(cfg, TOOL_SCHEMAS[tool])
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"no value for {', '.join(missing)} (give {' '.join(f'{k}=...' for k in missing)})")

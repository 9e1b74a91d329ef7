"""The DeepSpeed engine, for pretraining and fine-tuning alike: one builder; each caller hands over its own config
sections (:class:`EngineSpec`), so that both get every engine option (ZeRO stages, offload, bf16/fp16, clipping,
``deepspeed.extra``) the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import OmegaConf

from ..data.sampler import accumulation_steps
from . import optim as optimizers


@dataclass
class EngineSpec:
    """What an engine is built from. ``deepspeed``: a section with ``zero_stage``, ``offload`` and ``extra``;
    ``optim``: one with ``lr``, ``warmup_steps``, ``schedule``, ``end_lr_ratio``, ``weight_decay``, ``beta1``,
    ``beta2``, ``eps``; ``groups``: ``optim.group_settings`` of it."""

    precision: str
    micro_batch_size: int
    global_batch_size: int
    gradient_clipping: float
    deepspeed: Any
    optim: Any
    total_steps: int
    groups: list
    global_key: str = "train.global_batch_size"  # the setting that gave global_batch_size, for errors
    compile: bool = False  # torch.compile the model inside the engine (impl.compile)

    @classmethod
    def for_pretraining(cls, cfg, own_rates: dict | None = None) -> EngineSpec:
        """The spec of a pretraining run; ``own_rates``: the objective's parameter groups with their own rate."""
        train = cfg.train
        return cls(cfg.precision, train.micro_batch_size, train.global_batch_size, train.gradient_clipping,
                   cfg.deepspeed, cfg.optim, train.max_steps, optimizers.group_settings(cfg.optim, own_rates),
                   compile=bool(cfg.impl.compile))


def uses_deepspeed_optimizer(spec: EngineSpec) -> bool:
    """DeepSpeed's CPU-Adam when the optimizer state is offloaded; otherwise torch's AdamW (optim.build_optimizer)."""
    return bool(spec.deepspeed.offload)


def check_engine_options(spec: EngineSpec, world_size: int, on_gpu: bool) -> int:
    """The gradient accumulation of ``spec`` on ``world_size`` processes; ``ValueError`` naming the key for batch
    sizes that do not divide, offload without ZeRO, fp16 without a GPU (checked before anything is written)."""
    accumulation = accumulation_steps(spec.global_batch_size, spec.micro_batch_size, world_size, spec.global_key)
    if spec.deepspeed.offload and spec.deepspeed.zero_stage < 1:
        raise ValueError("deepspeed.offload needs deepspeed.zero_stage >= 1")
    if spec.precision == "fp16" and not on_gpu:
        raise ValueError("precision=fp16 needs a GPU (the CPU has no fp16 kernels); use precision=bf16 or fp32")
    zero = extra_options(spec).get("zero_optimization")
    if isinstance(zero, dict):
        check_zero_options({"stage": spec.deepspeed.zero_stage, **zero})
    return accumulation


def extra_options(spec: EngineSpec) -> dict:
    """``deepspeed.extra`` as a plain dict."""
    extra = spec.deepspeed.get("extra") or {}
    return extra if isinstance(extra, dict) else OmegaConf.to_container(extra, resolve=True)


def check_zero_options(zero: dict) -> None:
    """DeepSpeed's own schema of ``zero_optimization``: a misspelt key in ``deepspeed.extra`` is named at start-up
    in one line, rather than deep inside ``deepspeed.initialize``."""
    import pydantic  # noqa: PLC0415
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # noqa: PLC0415

    try:
        DeepSpeedZeroConfig(**zero)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"deepspeed.extra.zero_optimization.{where}: {first['msg'].lower()} (DeepSpeed's "
                         f"zero_optimization settings)") from None


def deepspeed_config(spec: EngineSpec, world_size: int, on_gpu: bool) -> dict:
    """The DeepSpeed config dict (options checked by :func:`check_engine_options`); ``deepspeed.extra`` is merged
    in last."""
    micro, global_batch = spec.micro_batch_size, spec.global_batch_size
    accumulation = check_engine_options(spec, world_size, on_gpu)
    zero = {"stage": spec.deepspeed.zero_stage}
    if spec.deepspeed.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
        if spec.deepspeed.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    config = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": spec.gradient_clipping,
        "zero_optimization": zero,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if spec.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif spec.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                          "hysteresis": 2, "min_loss_scale": 1}
    if uses_deepspeed_optimizer(spec):
        params = optimizers.adam_params(spec.optim)
        params["betas"] = list(params["betas"])
        config["optimizer"] = {"type": "AdamW", "params": params}
    return _merge(config, extra_options(spec))


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(dict(base[key]), value)
        else:
            base[key] = value
    return base


def build_engine(model: torch.nn.Module, spec: EngineSpec, world_size: int, on_gpu: bool,
                 load_universal: bool = False):
    """A DeepSpeed engine over ``model`` with AdamW and the schedule of ``spec``; ``load_universal`` prepares it to
    load a checkpoint in DeepSpeed's universal form."""
    import deepspeed  # noqa: PLC0415

    config = deepspeed_config(spec, world_size, on_gpu)
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    groups = optimizers.param_groups(model, spec.groups)
    if uses_deepspeed_optimizer(spec):
        optimizer, scheduler = None, (lambda opt: optimizers.build_scheduler(opt, spec.optim, spec.total_steps))
    else:
        optimizer = optimizers.build_optimizer(groups, spec.optim, on_gpu)
        scheduler = optimizers.build_scheduler(optimizer, spec.optim, spec.total_steps)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=config)
    if spec.compile:
        if spec.deepspeed.zero_stage == 3:
            gather_shared_tables(engine.module)
        # DeepSpeed compiles the module in place (nn.Module.compile): parameter names, and so checkpoints, are
        # those of the eager module, and its ZeRO hooks stay outside the graph. Compilation happens at the first
        # forward of each mode (training, evaluation).
        engine.compile(backend="inductor")
    return engine


SHARED_TABLES = ("word_embeddings.weight", "position_embeddings.weight", "rel_embeddings.weight")


def gather_shared_tables(model: torch.nn.Module) -> None:
    """ZeRO-3 under torch.compile: the tables the model reads outside their own modules' forward (the tied MLM
    decoder, the relative-position table, the tables RTD shares) are registered with the top module, whose hooks
    gather them before the forward starts. Eagerly, ZeRO-3 finds such reads as they happen; the compiled graph would
    see them as empty partitions."""
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter  # noqa: PLC0415

    for name, parameter in model.named_parameters():
        if name.endswith(SHARED_TABLES):
            register_external_parameter(model, parameter)


def check_compiler(device: torch.device) -> None:
    """``ValueError`` in one line when ``torch.compile`` cannot build code on ``device`` (impl.compile=true): a C++
    compiler for inductor's CPU backend, Triton for GPUs. Compiles a two-operation function (a few seconds)."""
    import torch._dynamo  # noqa: PLC0415

    needs = "Triton (pip install triton)" if device.type == "cuda" else "a C++ compiler (g++ or clang++ on the PATH)"
    try:
        probe = torch.compile(lambda x: torch.relu(x) * 2 + 1, backend="inductor", fullgraph=True)
        probe(torch.ones(8, device=device))
    except Exception as e:  # noqa: BLE001 - any failure to build code means the same to the user
        cause = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"impl.compile=true: torch.compile cannot build code on this machine ({cause}); it needs "
                         f"{needs}. Install it or set impl.compile=false") from None
    finally:
        torch._dynamo.reset()

"""Optimizer parameter groups, the DeepSpeed config, and learning-rate schedules."""

from __future__ import annotations

import math
import re

import torch
from omegaconf import OmegaConf

NO_DECAY = re.compile(r"bias|LayerNorm\.weight")  # upstream: no weight decay on biases and LayerNorm weights


def group_settings(cfg) -> list[tuple[str, dict]]:
    """(parameter-name prefix, settings) of each optimizer group, in order: with decay, then without (biases and
    LayerNorm weights), and for the rtd objective with ``rtd.discriminator_lr`` both again for the discriminator."""
    decay, no_decay = {"weight_decay": cfg.optim.weight_decay}, {"weight_decay": 0.0}
    if cfg.objective == "rtd" and cfg.rtd.discriminator_lr:
        lr = {"lr": cfg.rtd.discriminator_lr}
        return [("", decay), ("", no_decay),
                ("discriminator.", {**decay, **lr}), ("discriminator.", {**no_decay, **lr})]
    return [("", decay), ("", no_decay)]


def param_groups(model: torch.nn.Module, cfg) -> list[dict]:
    settings = group_settings(cfg)
    groups = [{"params": [], **options} for _, options in settings]
    for name, p in model.named_parameters():
        if p.requires_grad:
            own = [i for i, (prefix, _) in enumerate(settings) if prefix and name.startswith(prefix)]
            first = own[0] if own else 0
            groups[first + (1 if NO_DECAY.search(name) else 0)]["params"].append(p)
    return groups


def repair_after_universal_load(engine) -> None:
    """Undo a slip of DeepSpeed 0.19's ZeRO-3 universal-checkpoint load: every group's state shares one ``step``
    tensor (AdamW increments it in place, once per group and step, so later groups would use the wrong bias
    correction). Its other slip, every parameter group getting the first group's settings (biases and LayerNorm
    weights would be decayed from then on), is undone by :func:`apply_settings`, which follows every resume."""
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch optimizer inside ZeRO's wrapper
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def apply_settings(engine, cfg) -> None:
    """After a checkpoint was loaded (which restores the settings it was saved with), set the optimizer's
    hyper-parameters and the schedule's peak rates from ``cfg``. The schedule keeps its position and takes its shape
    from ``cfg``, so the next update's learning rate is the new peak times the multiplier of that step."""
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch optimizer inside ZeRO's wrapper
    scheduler, settings_of_groups = engine.lr_scheduler, group_settings(cfg)
    if len(optimizer.param_groups) != len(settings_of_groups):  # paired by position: never guess
        raise RuntimeError(f"the optimizer has {len(optimizer.param_groups)} parameter groups, the settings "
                           f"describe {len(settings_of_groups)}")
    for group, (_, settings) in zip(optimizer.param_groups, settings_of_groups):
        group.update(weight_decay=settings["weight_decay"], betas=(cfg.optim.beta1, cfg.optim.beta2),
                     eps=cfg.optim.eps, initial_lr=settings.get("lr", cfg.optim.lr))
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, multiplier in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * multiplier(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def lr_multiplier(step: int, total: int, warmup: int, schedule: str, end_ratio: float = 0.0) -> float:
    """Learning-rate multiplier of the ``step``-th optimizer update (1-based, as upstream's ``state['step']``, so
    the first update does not have a learning rate of 0).

    ``linear`` is upstream's ``warmup_linear``: with ``x = step / total`` and ``w = warmup / total``, ``x / w``
    during warmup, then ``(1 - end) * (1 - x) + end`` (the decay is not renormalised after warmup, as upstream).
    ``cosine``: linear warmup, then cosine from 1 to ``end``. ``constant``: warmup, then 1.
    """
    if warmup > 0 and step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    x = min(step / max(total, 1), 1.0)
    if schedule == "linear":
        return (1 - end_ratio) * (1 - x) + end_ratio
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return end_ratio + (1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step + 1, cfg.train.max_steps, cfg.optim.warmup_steps, cfg.optim.schedule,
                                              cfg.optim.end_lr_ratio))


def adam_params(cfg) -> dict:
    return {"lr": cfg.optim.lr, "betas": (cfg.optim.beta1, cfg.optim.beta2), "eps": cfg.optim.eps,
            "weight_decay": cfg.optim.weight_decay}


def uses_deepspeed_optimizer(cfg) -> bool:
    """DeepSpeed's CPU-Adam when the optimizer state is offloaded; otherwise a torch AdamW (see build_optimizer)."""
    return bool(cfg.deepspeed.offload)


def build_optimizer(groups: list[dict], cfg, on_gpu: bool) -> torch.optim.Optimizer:
    """torch's AdamW, with its single-kernel ``fused`` implementation on GPUs. DeepSpeed's FusedAdam is as fast but is
    JIT-compiled with nvcc on first use (a minute of start-up, and a failure where the CUDA toolkit is missing);
    torch's ships compiled, and DeepSpeed's ZeRO stages take it as they take their own."""
    return torch.optim.AdamW(groups, **adam_params(cfg), fused=on_gpu)


def deepspeed_config(cfg, world_size: int, on_gpu: bool) -> dict:
    """The DeepSpeed config dict for this run; ``deepspeed.extra`` is merged in last."""
    micro, global_batch = cfg.train.micro_batch_size, cfg.train.global_batch_size
    if global_batch % (micro * world_size):
        raise ValueError(f"train.global_batch_size ({global_batch}) must be a multiple of train.micro_batch_size "
                         f"x world size ({micro} x {world_size})")
    zero = {"stage": cfg.deepspeed.zero_stage}
    if cfg.deepspeed.offload:
        if cfg.deepspeed.zero_stage < 1:
            raise ValueError("deepspeed.offload needs deepspeed.zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
        if cfg.deepspeed.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    config = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": global_batch // (micro * world_size),
        "gradient_clipping": cfg.train.gradient_clipping,
        "zero_optimization": zero,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif cfg.precision == "fp16":
        if not on_gpu:
            raise ValueError("precision=fp16 needs a GPU (the CPU has no fp16 kernels); use precision=bf16 or fp32")
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                          "hysteresis": 2, "min_loss_scale": 1}
    if uses_deepspeed_optimizer(cfg):
        params = adam_params(cfg)
        params["betas"] = list(params["betas"])
        config["optimizer"] = {"type": "AdamW", "params": params}
    extra = cfg.deepspeed.extra or {}
    if not isinstance(extra, dict):
        extra = OmegaConf.to_container(extra, resolve=True)
    return _merge(config, extra)


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(dict(base[key]), value)
        else:
            base[key] = value
    return base

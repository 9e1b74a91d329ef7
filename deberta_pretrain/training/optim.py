"""Optimizer parameter groups, AdamW, learning-rate schedules, and settings applied after a checkpoint is loaded.
Each function takes the ``optim`` section (lr, warmup_steps, schedule, end_lr_ratio, weight_decay, beta1, beta2,
eps) it needs, not the whole config."""

from __future__ import annotations

import math
import re

import torch

NO_DECAY = re.compile(r"bias|LayerNorm\.weight")  # upstream: no weight decay on biases and LayerNorm weights


def group_settings(optim, own_rates: dict | None = None) -> list[tuple[str, dict]]:
    """(parameter-name prefix, settings) of each optimizer group, in order: with decay, then without (biases and
    LayerNorm weights), and both again for every prefix of ``own_rates`` ({prefix: learning rate}, the objective's
    policy: e.g. rtd's ``rtd.discriminator_lr`` for ``discriminator.``)."""
    decay, no_decay = {"weight_decay": optim.weight_decay}, {"weight_decay": 0.0}
    groups = [("", decay), ("", no_decay)]
    for prefix, lr in (own_rates or {}).items():
        groups += [(prefix, {**decay, "lr": lr}), (prefix, {**no_decay, "lr": lr})]
    return groups


def param_groups(model: torch.nn.Module, settings: list[tuple[str, dict]]) -> list[dict]:
    """The parameters of ``model`` in the groups of ``settings`` (:func:`group_settings`)."""
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


def apply_settings(engine, optim, settings: list[tuple[str, dict]]) -> None:
    """After a checkpoint was loaded (which restores the settings it was saved with), set the optimizer's
    hyper-parameters from the ``optim`` section and the groups' ``settings``, and the schedule's peak rates. The
    schedule keeps its position and takes its shape from ``optim``, so the next update's learning rate is the new
    peak times the multiplier of that step."""
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch optimizer inside ZeRO's wrapper
    scheduler = engine.lr_scheduler
    if len(optimizer.param_groups) != len(settings):  # paired by position: never guess
        raise RuntimeError(f"the optimizer has {len(optimizer.param_groups)} parameter groups, the settings "
                           f"describe {len(settings)}")
    for group, (_, options) in zip(optimizer.param_groups, settings):
        group.update(weight_decay=options["weight_decay"], betas=(optim.beta1, optim.beta2), eps=optim.eps,
                     initial_lr=options.get("lr", optim.lr))
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, multiplier in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * multiplier(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def lr_multiplier(step: int, total: int, warmup: int, schedule: str, end_ratio: float = 0.0,
                  decay_steps: int | None = None, decay_shape: str = "linear") -> float:
    """Learning-rate multiplier of the ``step``-th optimizer update (1-based, as upstream's ``state['step']``, so
    the first update does not have a learning rate of 0).

    ``linear`` is upstream's ``warmup_linear``: with ``x = step / total`` and ``w = warmup / total``, ``x / w``
    during warmup, then ``(1 - end) * (1 - x) + end`` (the decay is not renormalised after warmup, as upstream).
    ``cosine``: linear warmup, then cosine from 1 to ``end``. ``constant``: warmup, then 1. ``wsd``
    (warmup-stable-decay): warmup, 1 until step ``total - decay_steps``, then over the last ``decay_steps`` with
    ``t`` going to 1: ``end + (1 - end) * f(t)``, ``f`` = ``1 - t`` (linear), ``1 - sqrt(t)`` (sqrt) or
    ``(1 + cos(pi t)) / 2`` (cosine).
    """
    if warmup > 0 and step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        t = min(max(step - (total - decay_steps), 0) / decay_steps, 1.0)
        shape = {"linear": 1 - t, "sqrt": 1 - math.sqrt(t), "cosine": 0.5 * (1 + math.cos(math.pi * t))}
        return end_ratio + (1 - end_ratio) * shape[decay_shape]
    x = min(step / max(total, 1), 1.0)
    if schedule == "linear":
        return (1 - end_ratio) * (1 - x) + end_ratio
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return end_ratio + (1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, optim, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of the ``optim`` section over ``total_steps`` updates."""
    decay_steps, decay_shape = optim.get("decay_steps"), optim.get("decay_shape", "linear")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step + 1, total_steps, optim.warmup_steps, optim.schedule,
                                              optim.end_lr_ratio, decay_steps, decay_shape))


def adam_params(optim) -> dict:
    return {"lr": optim.lr, "betas": (optim.beta1, optim.beta2), "eps": optim.eps, "weight_decay": optim.weight_decay}


def build_optimizer(groups: list[dict], optim, on_gpu: bool) -> torch.optim.Optimizer:
    """torch's AdamW, with its single-kernel ``fused`` implementation on GPUs. DeepSpeed's FusedAdam is as fast but is
    JIT-compiled with nvcc on first use (a minute of start-up, and a failure where the CUDA toolkit is missing);
    torch's ships compiled, and DeepSpeed's ZeRO stages take it as they take their own."""
    return torch.optim.AdamW(groups, **adam_params(optim), fused=on_gpu)

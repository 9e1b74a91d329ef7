"""Model FLOPs of DeBERTa training per token (PaLM-style: 6 x weights + attention scores), for MFU: what our
implementation computes (the sparse MLM head over the masked fraction, EMD queries only at masked positions); and
the GPUs' peak that MFU divides by."""

from __future__ import annotations

import torch

from .relative_position import make_log_bucket_position

# Dense bf16/fp16 tensor-core peak per device in TFLOP/s (vendor specifications), matched against the device name.
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
               ("V100", 125.0))


def detect_peak_tflops(device_name: str | None) -> float | None:
    """The peak of the first ``PEAK_TFLOPS`` entry found in ``device_name``; None for an unknown device."""
    if not device_name:
        return None
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def relative_slots(config, length: int) -> int:
    """R, the number of relative-position slots a sequence of ``length`` actually uses."""
    if not config.relative_attention or not config.pos_att_type:
        return 0
    span = config.relative_span
    if config.is_v2 and config.position_buckets > 0:
        top = int(make_log_bucket_position(torch.tensor([length - 1]), config.position_buckets,
                                           config.max_relative_distance)[0])
        return min(2 * top + 1, 2 * span)
    return min(2 * length - 1, 2 * span)


def flops_per_token(config, length: int, mask_fraction: float, emd: bool, tokens_per_step: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) per token, PaLM-style model FLOPs (6 x weights + attention
    scores), for our implementation: sparse MLM head over the masked fraction ``f``, EMD queries only at masked
    positions."""
    d, n, dff, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    a = config.num_attention_heads * config.head_size
    e = config.embed_size
    r = relative_slots(config, length)
    linears = 4 * d * a + 2 * d * dff
    per_layer = 6 * linears + 12 * a * length + 12 * a * r * (len(config.pos_att_type) / 2 if r else 0)
    total = n * per_layer
    total += 3 * mask_fraction * (2 * d * e + 2 * e * vocab)
    if emd:  # two passes of the last layer: K/V over all tokens, the rest over masked queries only
        total += 2 * (6 * 2 * d * a + mask_fraction * (6 * (2 * d * a + 2 * d * dff) + 12 * a * length + 12 * a * r))
    if r:
        total += n * 6 * 2 * (2 * config.relative_span) * d * a / max(tokens_per_step, 1)
    return total


def rtd_flops_per_token(generator, discriminator, length: int, mask_fraction: float,
                        emd: bool, tokens_per_step: int) -> float:
    """Training FLOPs per (discriminator) token: the generator (sparse head over the masked fraction, EMD) + the
    discriminator (every token, no vocabulary head) + the RTD head."""
    d = discriminator.hidden_size
    return (flops_per_token(generator, length, mask_fraction, emd, tokens_per_step)
            + flops_per_token(discriminator, length, 0.0, False, tokens_per_step) + 6 * (d * d + d))

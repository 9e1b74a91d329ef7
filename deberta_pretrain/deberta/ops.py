"""Small building blocks with upstream names: XSoftmax, StableDropout, MaskedLayerNorm, BertLayerNorm, activations."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACT2FN = {
    "gelu": F.gelu,
    "relu": F.relu,
    "swish": F.silu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "gelu_new": _gelu_new,
}


class XSoftmax(torch.autograd.Function):
    """Masked softmax: positions where ``mask`` is 0 get probability 0, and a row with no valid position is all
    zeros (not NaN). Only the output is saved for backward, which is all softmax's gradient needs.

    Example::

        x = torch.randn([4, 20, 100])
        mask = (x > 0).int()
        y = XSoftmax.apply(x, mask, -1)
    """

    @staticmethod
    def forward(ctx, input, mask, dim):
        rmask = ~(mask.to(torch.bool))
        # finfo.min instead of -inf: a fully masked row then gives a uniform row (zeroed below), never NaN.
        output = input.masked_fill(rmask, torch.finfo(input.dtype).min)
        output = torch.softmax(output, dim)
        output = output.masked_fill(rmask, 0)
        ctx.dim = dim
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        # d softmax: y * (g - sum(g * y)); masked positions have y == 0 so they get no gradient.
        grad_input = output * (grad_output - (grad_output * output).sum(ctx.dim, keepdim=True))
        return grad_input, None, None


class StableDropout(nn.Module):
    """Dropout with the upstream interface: ``StableDropout(drop_prob)(x)``; identity in eval mode or when p==0.

    Upstream's XDropout zeroes with a Bernoulli mask and rescales by 1/(1-p), which is exactly inverted dropout,
    so torch's fused implementation is used.
    """

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        if self.training and self.drop_prob > 0:
            return F.dropout(x, self.drop_prob, training=True)
        return x

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class BertLayerNorm(nn.Module):
    """LayerNorm in the TF style (epsilon inside the square root), computed in fp32 whatever the input dtype."""

    def __init__(self, size: int, eps: float = 1e-12):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.variance_epsilon = eps

    def forward(self, x):
        input_type = x.dtype
        x = x.float()
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).pow(2).mean(-1, keepdim=True)
        x = (x - mean) / torch.sqrt(variance + self.variance_epsilon)
        return (self.weight * x.to(input_type) + self.bias).to(input_type)


def MaskedLayerNorm(layerNorm, input, mask=None):  # noqa: N802,N803 (upstream name)
    """Apply ``layerNorm`` to ``input`` ([B, N, D]) and zero the positions where ``mask`` ([B, N]) is 0.

    Example::

        x = torch.randn([1, 10, 100])
        m = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.int)
        y = MaskedLayerNorm(BertLayerNorm(100), x, m)
    """
    output = layerNorm(input).to(input)
    if mask is None:
        return output
    if mask.dim() != input.dim():
        if mask.dim() == 4:
            mask = mask.squeeze(1).squeeze(1)
        mask = mask.unsqueeze(2)
    return output * mask.to(output.dtype)


def layer_norm_for(config, size: int):
    """v1 models use the fp32 ``BertLayerNorm`` (as the v1 release code); v2/v3 use ``torch.nn.LayerNorm``."""
    if config.is_v2:
        return nn.LayerNorm(size, eps=config.layer_norm_eps)
    return BertLayerNorm(size, eps=config.layer_norm_eps)

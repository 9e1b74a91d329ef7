"""Masked language model: the DeBERTa encoder, the Enhanced Mask Decoder (EMD) and the tied LM head.

Release names: ``deberta.*`` for the encoder and ``lm_predictions.lm_head.{dense, LayerNorm, bias}`` for the head;
the decoder weight is ``deberta.embeddings.word_embeddings.weight`` (tied, no key of its own).

Only predicted positions are decoded (sparse MLM head): the vocabulary projection, and with EMD the two extra
passes of the last layer, run on the masked tokens only. This equals upstream's EMD, which runs the last layer over
all positions and then selects the masked ones: a query row's output depends only on that row's query and on the
(unchanged) keys and values.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .deberta import DeBERTa
from .nnmodule import NNModule
from .ops import ACT2FN
from .relative_position import relative_position_from_ids


class BertLMPredictionHead(nn.Module):
    """dense (H -> E) -> activation -> LayerNorm -> ``@ word_embeddings^T + bias``."""

    def __init__(self, config, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embed_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.embed_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def transform(self, hidden_states):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))

    def forward(self, hidden_states, embedding_weight):
        return F.linear(self.transform(hidden_states), embedding_weight, self.bias)


class EnhancedMaskDecoder(nn.Module):
    """EMD: the absolute position embeddings are added to layer[-2]'s output and the last layer is run twice
    (shared weights) with that as query; without EMD the last layer's output is used directly."""

    def __init__(self, config, vocab_size: int, use_emd: bool):
        super().__init__()
        self.use_emd = use_emd
        self.lm_head = BertLMPredictionHead(config, vocab_size)

    def context(self, encoder, encoded: dict, predict: torch.Tensor) -> torch.Tensor:
        """Hidden states at the ``predict`` positions ([B, L] bool), flattened row-major to [N, H]."""
        layers = encoded["hidden_states"]
        if not self.use_emd:
            return layers[-1][predict]
        hidden = layers[-2]
        batch, length = predict.shape
        counts = predict.sum(1)
        width = max(int(counts.max()), 1)
        # Predicted positions first (in order), then the rest: the first `width` columns index the queries.
        query_idx = torch.argsort((~predict).to(torch.int8), dim=1, stable=True)[:, :width]
        query_valid = torch.arange(width, device=predict.device)[None, :] < counts[:, None]
        z_states = encoded["position_embeddings"].expand(batch, -1, -1)
        gather = query_idx.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        query_states = torch.gather(z_states + hidden, 1, gather)

        mask = encoded["attention_mask"]
        if mask.dim() <= 2:
            key_mask = mask.to(torch.bool)[:, None, :].expand(-1, width, -1)
        else:
            key_mask = torch.gather(mask.to(torch.bool), 1, query_idx.unsqueeze(-1).expand(-1, -1, length))
        att_mask = (key_mask & query_valid.unsqueeze(-1)).unsqueeze(1)
        key_pos = torch.arange(length, device=predict.device).unsqueeze(0)
        relative_pos = relative_position_from_ids(query_idx, key_pos, encoder.position_buckets,
                                                  encoder.max_relative_positions)
        rel_embeddings = encoder.get_rel_embedding()
        last = encoder.layer[-1]
        for _ in range(2):
            query_states = last(hidden, att_mask, query_states=query_states, relative_pos=relative_pos,
                                rel_embeddings=rel_embeddings)
        return query_states[query_valid]


class MaskedLanguageModel(NNModule):
    """DeBERTa MLM. ``use_emd`` defaults to upstream's rule: EMD iff ``position_biased_input`` is false."""

    def __init__(self, config, use_emd: bool | None = None, *args, **kwargs):
        super().__init__(config)
        self.deberta = DeBERTa(config)
        self.config = self.deberta.config
        if use_emd is None:
            use_emd = not self.config.position_biased_input
        if use_emd and self.config.embed_size != self.config.hidden_size:
            raise ValueError("EMD needs embedding_size == hidden_size (it adds position embeddings to hidden states)")
        vocab_size = self.deberta.embeddings.word_embeddings.weight.size(0)
        self.lm_predictions = EnhancedMaskDecoder(self.config, vocab_size, bool(use_emd))
        self.apply(self.init_weights)

    def forward(self, input_ids, input_mask=None, labels=None, position_ids=None, attention_mask=None,
                token_type_ids=None):
        """Args:
            input_ids: [B, L]; input_mask: [B, L] (1 = token); attention_mask: optional [B, L, L] (else input_mask).
            labels: [B, L] target ids at predicted positions; other positions hold the ignore index -100 (or 0,
                upstream's convention — [PAD] is never a target). Without labels every position is predicted.

        Returns a dict: ``loss`` (mean cross-entropy over predicted tokens, fp32), ``logits`` ([N, V] at the
        predicted positions, or [B, L, V] without labels), ``labels`` ([N]), ``num_predictions``, ``num_correct``.
        """
        mask = attention_mask if attention_mask is not None else input_mask
        encoded = self.deberta.encode(input_ids, mask, token_type_ids, position_ids)
        predict = labels > 0 if labels is not None else torch.ones_like(input_ids, dtype=torch.bool)
        hidden = self.lm_predictions.context(self.deberta.encoder, encoded, predict)
        logits = self.lm_predictions.lm_head(hidden, self.deberta.embeddings.word_embeddings.weight)
        if labels is None:
            return {"logits": logits.view(*input_ids.shape, -1)}
        targets = labels[predict].long()
        num = targets.numel()
        if num == 0:
            loss = logits.float().sum() * 0.0  # keeps the graph (every rank must run backward under ZeRO)
            correct = torch.zeros((), dtype=torch.long, device=logits.device)
        else:
            loss = F.cross_entropy(logits.float(), targets)
            correct = (logits.argmax(-1) == targets).sum()
        return {"loss": loss, "logits": logits, "labels": targets, "num_predictions": num, "num_correct": correct}

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

IGNORE_INDEX = -100  # cross-entropy's ignore index: rows that are not predicted


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


def prediction_slots(predict: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted positions of each row, in order, padded to ``width`` columns: (positions [B, W], valid [B, W]).

    Padding columns point at distinct unpredicted positions of the row (never read as targets). A fixed ``width``
    (the masking cap, upstream's ``max_predictions``) keeps every shape static: nothing is read back to the host.
    """
    positions = torch.argsort((~predict).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(positions.size(1), device=predict.device)[None, :] < predict.sum(1, keepdim=True)
    return positions, valid


class EnhancedMaskDecoder(nn.Module):
    """EMD: the absolute position embeddings are added to layer[-2]'s output and the last layer is run twice
    (shared weights) with that as query; without EMD the last layer's output is used directly."""

    def __init__(self, config, vocab_size: int, use_emd: bool):
        super().__init__()
        self.use_emd = use_emd
        self.lm_head = BertLMPredictionHead(config, vocab_size)

    def context(self, encoder, encoded: dict, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Hidden states at ``positions`` ([B, W], see :func:`prediction_slots`): [B, W, H]."""
        layers = encoded["hidden_states"]
        hidden = layers[-1] if not self.use_emd else layers[-2]
        gather = positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        if not self.use_emd:
            return torch.gather(hidden, 1, gather)
        batch, length = hidden.shape[:2]
        z_states = encoded["position_embeddings"].expand(batch, -1, -1)
        query_states = torch.gather(z_states + hidden, 1, gather)

        mask, documents = encoded["attention_mask"], encoded.get("document_ids")
        if mask.dim() <= 2:
            key_mask = mask.to(torch.bool)[:, None, :].expand(-1, positions.size(1), -1)
            if documents is not None:  # a predicted token sees its own document only
                key_mask = key_mask & (torch.gather(documents, 1, positions)[:, :, None] == documents[:, None, :])
        else:
            key_mask = torch.gather(mask.to(torch.bool), 1, positions.unsqueeze(-1).expand(-1, -1, length))
        att_mask = (key_mask & valid.unsqueeze(-1)).unsqueeze(1)
        key_pos = torch.arange(length, device=positions.device).unsqueeze(0)
        relative_pos = relative_position_from_ids(positions, key_pos, encoder.position_buckets,
                                                  encoder.max_relative_positions)
        rel_embeddings = encoder.get_rel_embedding()
        last = encoder.layer[-1]
        for _ in range(2):
            query_states = last(hidden, att_mask, query_states=query_states, relative_pos=relative_pos,
                                rel_embeddings=rel_embeddings)
        return query_states


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
        if use_emd and self.config.num_hidden_layers < 2:
            raise ValueError("EMD needs at least 2 layers (its query is the second-to-last layer's output); use "
                             "more layers or use_emd=false")
        vocab_size = self.deberta.embeddings.word_embeddings.weight.size(0)
        self.lm_predictions = EnhancedMaskDecoder(self.config, vocab_size, bool(use_emd))
        self.apply(self.init_weights)

    def forward(self, input_ids, input_mask=None, labels=None, position_ids=None, attention_mask=None,
                token_type_ids=None, max_predictions: int | None = None, document_ids=None):
        """Args:
            input_ids: [B, L]; input_mask: [B, L] (1 = token); attention_mask: optional [B, L, L] (else input_mask).
            document_ids: optional [B, L] ids of the packed documents (with ``position_ids`` restarting at each):
                attention, the EMD and the loss of a document never see another one.
            labels: [B, L] target ids at predicted positions; other positions hold the ignore index -100 (or 0,
                upstream's convention — [PAD] is never a target). Without labels every position is predicted.
            max_predictions: a bound on the predicted positions of any row (the masking cap). With it every shape
                is static and nothing is read back to the host (training); results are then padded to
                ``B * max_predictions`` rows, ``labels`` -100 on padding rows.

        Returns a dict: ``loss`` (mean cross-entropy over predicted tokens, fp32), ``logits`` ([N, V] at the
        predicted positions, or [B, L, V] without labels), ``labels`` ([N]), ``num_predictions``, ``num_correct``
        (tensors), and ``positions``/``valid`` ([B, W]: where each row of ``logits`` comes from).
        """
        mask = attention_mask if attention_mask is not None else input_mask
        encoded = self.deberta.encode(input_ids, mask, token_type_ids, position_ids, document_ids=document_ids)
        word_embeddings = self.deberta.embeddings.word_embeddings.weight
        if labels is None:
            positions = torch.arange(input_ids.size(1), device=input_ids.device).expand_as(input_ids)
            hidden = self.lm_predictions.context(self.deberta.encoder, encoded, positions,
                                                 torch.ones_like(input_ids, dtype=torch.bool))
            return {"logits": self.lm_predictions.lm_head(hidden, word_embeddings)}
        predict = labels > 0
        static = max_predictions is not None
        width = max_predictions if static else max(int(predict.sum(1).max()), 1)
        positions, valid = prediction_slots(predict, width)
        hidden = self.lm_predictions.context(self.deberta.encoder, encoded, positions, valid)
        hidden, keep = (hidden.flatten(0, 1), valid.flatten()) if static else (hidden[valid], None)
        logits = self.lm_predictions.lm_head(hidden, word_embeddings)
        targets = torch.gather(labels, 1, positions).long()
        targets = targets.flatten().masked_fill(~keep, IGNORE_INDEX) if static else targets[valid]
        num = valid.sum()
        # sum / count rather than the mean: an empty batch gives 0 with the graph kept (every rank must run
        # backward under ZeRO)
        loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum") / num.clamp(min=1)
        correct = (logits.argmax(-1) == targets).sum()
        return {"loss": loss, "logits": logits, "labels": targets, "num_predictions": num, "num_correct": correct,
                "positions": positions, "valid": valid}

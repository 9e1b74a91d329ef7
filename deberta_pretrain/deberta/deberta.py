"""The DeBERTa encoder: embeddings + stacked transformer layers with disentangled attention."""

from __future__ import annotations

import copy
import functools
import logging

import torch
from torch import nn

from . import loading
from .bert import BertEmbeddings, BertEncoder
from .nnmodule import init_weights, report_load_result

logger = logging.getLogger(__name__)


class DeBERTa(nn.Module):
    """DeBERTa encoder: the input embedding layer and stacked transformer layers with disentangled attention.

    Args:
        config: a :class:`ModelConfig` to build a new model.
        pre_trained: a pretrained model to start from: a local path or a release name (``base``, ``large``,
            ``base_mnli``, ``large_mnli``, v2/v3 names). Its config is used; fields of ``config`` other than the
            shape fields override it, as upstream.

    Example::

        input_ids = torch.LongTensor([[31, 51, 99], [15, 5, 0]])
        attention_mask = torch.LongTensor([[1, 1, 1], [1, 1, 0]])
        bert = DeBERTa(config)
        encoder_layers = bert(input_ids, attention_mask=attention_mask)
    """

    def __init__(self, config=None, pre_trained=None):
        super().__init__()
        state = None
        if pre_trained is not None:
            from .release import resolve_model_path  # noqa: PLC0415

            state, checkpoint_config = loading.load_model_state(resolve_model_path(pre_trained))
            config = loading.merge_configs(checkpoint_config, loading.as_model_config(config))
        if config is None:
            raise ValueError("DeBERTa needs a config or a pre_trained model")
        config = copy.copy(loading.as_model_config(config)).validate()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pre_trained = pre_trained
        self.apply(functools.partial(init_weights, initializer_range=config.initializer_range))
        self._pretrained_state = state
        self.apply_state(state)

    def apply_state(self, state=None):
        """Load ``state`` (a state dict, keys with or without a ``deberta.``-style prefix) into the encoder;
        without ``state``, reload the weights of ``pre_trained``. Extra keys (e.g. an MLM head) are ignored."""
        if state is None:
            state = self._pretrained_state
        if state is None:
            return
        prefix = ""
        for key in state:
            if "embeddings.word_embeddings" in key:
                prefix = key[: key.index("embeddings.word_embeddings")]
                break
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        own = {k: v for k, v in own.items() if k.split(".")[0] in ("embeddings", "encoder")}
        result = self.load_state_dict(own, strict=False)
        report_load_result(result, str(self.pre_trained or "state dict"), strict=False)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
               output_all_encoded_layers=True, return_att=False, relative_pos=None, document_ids=None):
        """Forward pass returning everything the heads need: ``hidden_states`` (list, one per layer),
        ``attention_probs``, ``embeddings``, ``position_embeddings`` (the EMD's z-states), ``attention_mask``,
        ``document_ids``. ``document_ids`` ([B, L], with a 2-D ``attention_mask``): packed documents, each token
        attends only within its own (pass ``position_ids`` restarting at each document with them)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_mask = attention_mask if attention_mask.dim() <= 2 else (attention_mask.sum(-2) > 0)
        ebd = self.embeddings(input_ids.long(), token_type_ids, position_ids, input_mask.to(torch.int))
        out = self.encoder(ebd["embeddings"], attention_mask, output_all_encoded_layers=output_all_encoded_layers,
                           return_att=return_att, relative_pos=relative_pos, document_ids=document_ids)
        out.update(embeddings=ebd["embeddings"], position_embeddings=ebd["position_embeddings"],
                   attention_mask=attention_mask, document_ids=document_ids)
        return out

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_all_encoded_layers=True,
                position_ids=None, return_att=False):
        """Args:
            input_ids: [B, N] token ids.
            attention_mask: [B, N] input mask (1 = token, 0 = padding) or [B, N, N] attention mask
                ([b, i, j] = 1 if token i may attend to token j).
            token_type_ids: [B, N] segment ids (used when ``type_vocab_size > 0``).
            output_all_encoded_layers: return every layer's output, else a one-element list with the last.
            position_ids: [B, N] absolute positions (default 0..N-1).
            return_att: also return the per-layer attention probabilities.

        Returns the list of layer outputs ([B, N, H] each), and with ``return_att`` a tuple
        ``(layers, attention_probs)``.
        """
        out = self.encode(input_ids, attention_mask, token_type_ids, position_ids, output_all_encoded_layers,
                          return_att)
        if return_att:
            return out["hidden_states"], out["attention_probs"]
        return out["hidden_states"]

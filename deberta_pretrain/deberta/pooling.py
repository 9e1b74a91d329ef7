"""``ContextPooler`` and the sequence-classification model used for fine-tuning checks."""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from .config import PoolConfig
from .deberta import DeBERTa
from .nnmodule import NNModule
from .ops import ACT2FN, StableDropout


class ContextPooler(nn.Module):
    """Pools a sequence by its first token ([CLS]): dropout -> dense -> activation."""

    def __init__(self, config: PoolConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = StableDropout(config.dropout)
        self.act = ACT2FN[config.hidden_act]
        self.config = config

    def forward(self, hidden_states, mask=None):
        return self.act(self.dense(self.dropout(hidden_states[:, 0])))

    def output_dim(self) -> int:
        return self.config.hidden_size


class SequenceClassificationModel(NNModule):
    """DeBERTa + ContextPooler + linear classifier (release keys ``pooler.dense.*``, ``classifier.*``).
    ``num_labels == 1`` is regression (MSE), otherwise classification (cross-entropy)."""

    def __init__(self, config, num_labels: int = 2, drop_out: float | None = None, pre_trained=None):
        super().__init__(config)
        self.num_labels = num_labels
        self.deberta = DeBERTa(config, pre_trained=pre_trained)
        self.config = self.deberta.config
        pool_config = PoolConfig(self.config)
        self.pooler = ContextPooler(pool_config)
        self.classifier = nn.Linear(self.pooler.output_dim(), num_labels)
        self.dropout = StableDropout(self.config.hidden_dropout_prob if drop_out is None else drop_out)
        self.apply(self.init_weights)
        self.deberta.apply_state()

    def forward(self, input_ids, type_ids=None, input_mask=None, labels=None, position_ids=None):
        layers = self.deberta(input_ids, input_mask, type_ids, output_all_encoded_layers=False,
                              position_ids=position_ids)
        logits = self.classifier(self.dropout(self.pooler(layers[-1])))
        out = {"logits": logits}
        if labels is not None:
            if self.num_labels == 1:
                out["loss"] = F.mse_loss(logits.view(-1).float(), labels.view(-1).float())
            else:
                out["loss"] = F.cross_entropy(logits.float(), labels.view(-1).long())
        return out

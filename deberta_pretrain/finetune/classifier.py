"""The classifier fine-tuning trains: ``SequenceClassificationModel`` on the pretrained encoder, with upstream's GLUE
pooling (:data:`POOLING`, which an export writes into its config too)."""

from __future__ import annotations

from ..deberta import ModelConfig, SequenceClassificationModel

POOLING = {"dropout": 0.0, "hidden_act": "gelu"}  # upstream's GLUE pooler: no dropout inside it, GELU


def classifier_config(config: ModelConfig) -> ModelConfig:
    """The encoder's config with upstream's GLUE pooling (:data:`POOLING`)."""
    fields = config.to_dict()
    fields["pooling"] = dict(POOLING)
    return ModelConfig.from_dict(fields)


def classifier(pretrained, num_labels: int, dropout: float, from_scratch: bool,
               checkpoint: str) -> SequenceClassificationModel:
    """The classifier on the pretrained encoder (``from_scratch``: freshly initialised); ``ValueError`` naming
    ``checkpoint`` when it lacks encoder weights."""
    model = SequenceClassificationModel(classifier_config(pretrained.config), num_labels=num_labels, drop_out=dropout)
    if not from_scratch:
        encoder = {k: v for k, v in pretrained.state.items() if k.startswith("deberta.")}
        result = model.load_state_dict(encoder, strict=False)
        fresh = sorted(k for k in result.missing_keys if not k.startswith(("pooler.", "classifier.")))
        if fresh:
            raise ValueError(f"checkpoint {checkpoint} lacks encoder weights: {fresh[:5]}...")
    return model

"""A fine-tuned classifier in release format (``SequenceClassificationModel.load_model``) and Hugging Face format
(``AutoModelForSequenceClassification.from_pretrained`` gives the same logits), in one folder."""

from __future__ import annotations

from ..deberta import ModelConfig
from ..export import write_model
from ..fileio import staged_folder
from .classifier import POOLING, classifier_config


def export_classifier(state: dict, pretrained, data, folder: str) -> str:
    config = classifier_config(pretrained.config)
    fields = config.to_dict()
    fields.update(num_labels=data.num_labels)
    config = ModelConfig.from_dict(fields)
    labels = [str(v) for v in data.labels] or ["score"]
    hf_extra = {"num_labels": data.num_labels, "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)}, "pooler_dropout": POOLING["dropout"],
                "pooler_hidden_act": POOLING["hidden_act"], "pooler_hidden_size": config.hidden_size,
                "problem_type": "regression" if data.problem == "regression" else "single_label_classification"}
    with staged_folder(folder) as staging:
        write_model(state, config, pretrained.tokenizer, staging, "all", "fp32", head="classification",
                    hf_extra=hf_extra)
    return folder

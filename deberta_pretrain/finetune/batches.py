"""A task's examples as the model reads them: tokenized (``[CLS] a [SEP] (b [SEP])``), subsampled where the config
caps them, and gathered into batches, each step's examples a pure function of the seed and the step."""

from __future__ import annotations

import numpy as np
import torch

from .data import load_task


def subsample(n: int, limit, seed: int) -> list[int]:
    """The indices of a deterministic subset of ``limit`` of ``n`` records (all where ``limit`` is unset)."""
    if not limit or n <= limit:
        return list(range(n))
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit]).tolist()


def encode(records: list[dict], task, tokenizer, max_length: int, targets: list) -> dict:
    """Token ids ``[CLS] a [SEP] (b [SEP])`` truncated longest-first to ``max_length``, segment ids, and the
    ``targets`` (checked labels, see :func:`~.labels.label_targets`)."""
    fields = list(task.text_fields)
    if not 1 <= len(fields) <= 2:
        raise ValueError(f"task.text_fields: one or two fields, got {fields}")
    inputs, segments = [], []
    texts = [[r[f] for r in records] for f in fields]
    encoded = [tokenizer.encode_batch(column) if hasattr(tokenizer, "encode_batch") else
               [tokenizer.encode(t) for t in column] for column in texts]
    for i in range(len(records)):
        parts = [list(np.asarray(column[i]).tolist()) for column in encoded]
        budget = max_length - len(parts) - 1
        while sum(map(len, parts)) > budget:
            longest = max(range(len(parts)), key=lambda j: len(parts[j]))
            parts[longest].pop()
        ids = [tokenizer.cls_token_id] + parts[0] + [tokenizer.sep_token_id]
        segment = [0] * len(ids)
        if len(parts) == 2:
            ids += parts[1] + [tokenizer.sep_token_id]
            segment += [1] * (len(parts[1]) + 1)
        inputs.append(ids)
        segments.append(segment)
    return {"input_ids": inputs, "segments": segments, "labels": list(targets)}


def encode_split(split, task, tokenizer, limit) -> dict:
    keep = subsample(len(split.records), limit, 0)
    return encode([split.records[i] for i in keep], task, tokenizer, task.recipe.max_length,
                  [split.targets[i] for i in keep])


class TaskData:
    """The encoded train and dev splits of a task, its label space and dev metrics; every split is read and checked
    first (:func:`~.data.load_task`). ``train``: the config's section, whose ``max_train_samples`` and
    ``max_eval_samples`` cap the splits."""

    def __init__(self, task, tokenizer, train):
        loaded = load_task(task)
        self.problem, self.labels, self.metrics = loaded.problem, loaded.labels, loaded.metrics
        self.num_labels = len(self.labels) or 1
        self.train = encode_split(loaded.train, task, tokenizer, train.max_train_samples)
        self.dev = {name: encode_split(split, task, tokenizer, train.max_eval_samples)
                    for name, split in loaded.dev.items()}


def collate(data: dict, indices, use_segments: bool, regression: bool, device) -> dict:
    length = max(len(data["input_ids"][i]) for i in indices)
    ids = torch.zeros(len(indices), length, dtype=torch.long)
    segments = torch.zeros_like(ids)
    for row, i in enumerate(indices):
        n = len(data["input_ids"][i])
        ids[row, :n] = torch.tensor(data["input_ids"][i])
        segments[row, :n] = torch.tensor(data["segments"][i])
    labels = torch.tensor([data["labels"][i] for i in indices], dtype=torch.float32 if regression else torch.long)
    batch = {"input_ids": ids, "input_mask": (ids > 0).long() | (torch.arange(length) == 0).long(),
             "labels": labels}
    if use_segments:
        batch["type_ids"] = segments
    return {k: v.to(device) for k, v in batch.items()}


def batch_indices(n: int, batch_size: int, steps_per_epoch: int, seed: int, step: int) -> np.ndarray:
    """The examples of ``step``: the epoch's permutation (by seed and epoch), its last, short batch filled from its
    start."""
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batch = order[position * batch_size:(position + 1) * batch_size]
    return np.concatenate([batch, order[:batch_size - len(batch)]]) if len(batch) < batch_size else batch

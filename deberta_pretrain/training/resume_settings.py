"""What a resumed run does with settings that differ from the ones its checkpoint was trained with.

Every checkpoint records the full config that wrote it (in its ``complete.json``; for checkpoints from before that
record, the run's ``.hydra/config.yaml`` stands in). On resume each key that changed is, by its group:

* **fixed**: what is being trained and on which sample stream — the model and its enhanced mask decoder
  (``impl.use_emd``), the data (its sources, their weights and ``alpha``, the shuffle window) and its masking, the
  seed, the global batch, the precision, the objective and its RTD recipe. Changing one would silently train
  something else (or break exact resume), so the run stops, one line per key with both values, before an engine is
  built or anything is written.
* **applied** from the resumed step, logged and appended to ``config_changes.jsonl`` in the run directory: every
  other key. The optimizer and schedule (``optim.*``, ``rtd.discriminator_lr``: the optimizer state keeps its
  moments, the learning rate follows the new peak with the schedule's shape and position kept), the run length
  and cadences (``train.*``), the engine (ZeRO stage, offload, micro batch: elastic resume), ``impl.*`` but
  ``use_emd``, ``logging.*`` and the data loading (workers, staging, verification). ``model.init_from``,
  ``rtd.init_generator`` and ``train.init_optimizer`` are read only when a run starts: a change is logged as having
  no effect.

``name`` and ``output_root`` locate the run and are not compared; paths are compared as absolute paths. A key that
only one side has (a key added by a later version) is compared only where it may change. The run's
``.hydra/config.yaml`` is always the config it runs with.
"""

from __future__ import annotations

import json
import logging
import os

from .. import remote
from ..config_keys import ABSENT, changed_keys
from ..layout import CONFIG_CHANGES

logger = logging.getLogger("deberta_pretrain")

FIXED = ("model", "impl.use_emd", "data.path", "data.sources", "data.alpha", "data.masking", "data.mask_prob",
         "data.max_ngram", "data.max_predictions", "data.mask_token_prob", "data.random_token_prob",
         "data.document_attention", "data.shuffle_window", "seed", "train.global_batch_size", "precision", "objective", "rtd")
# what a run starts from (weights, optimizer moments): a checkpoint of the run itself supersedes them
START_ONLY = ("model.init_from", "rtd.init_generator", "train.init_optimizer", "train.fork_from")
FORK_MAY_CHANGE = ("data.path", "data.sources", "data.alpha", "data.shuffle_window")  # a fork may read another mixture from its step on
APPLIED_IN_FIXED_GROUPS = (*START_ONLY, "rtd.discriminator_lr")
NOT_COMPARED = ("name", "output_root")
PATHS = ("data.path", "data.stage_dir", "model.init_from", "rtd.init_generator", "train.fork_from")


def _under(key: str, groups) -> bool:
    return any(key == group or key.startswith(group + ".") for group in groups)


def is_fixed(key: str) -> bool:
    """Whether ``key`` may not change when a run resumes."""
    return _under(key, FIXED) and not _under(key, APPLIED_IN_FIXED_GROUPS)


def _refused(key: str, old, new) -> bool:
    if key == "rtd.discriminator_lr":  # a value may change; null <-> a value changes the optimizer's groups
        return (old is None) != (new is None)
    return is_fixed(key) and ABSENT not in (old, new)  # a key one side lacks is a later version's: not compared


def _comparable(config: dict) -> dict:
    out = {k: v for k, v in config.items() if k not in NOT_COMPARED}
    for key in PATHS:
        section, name = key.split(".")
        value = (out.get(section) or {}).get(name)
        if isinstance(value, str) and os.path.exists(value):  # a release name stays a name
            out[section] = {**out[section], name: os.path.abspath(value)}
    if isinstance(out.get("data"), dict) and "sources" in out["data"]:
        out["data"] = _mixture(out["data"])
    return out


def _mixture(data: dict) -> dict:
    """``data`` with its mixture in one comparable value: ``data.sources`` as ``name: path @ share`` (explicit
    weights normalised, so 7:3 equals 0.7:0.3; an added or removed source is a change of this one key), and
    ``data.alpha`` only where it sets shares (every weight null)."""
    sources = data.get("sources") or {}
    data = dict(data)
    weights = [entry.get("weight") for entry in sources.values() if isinstance(entry, dict)]
    explicit = all(isinstance(w, (int, float)) for w in weights)
    total = sum(weights) if explicit and weights and sum(weights) > 0 else None
    described = []
    for name, entry in sorted(sources.items()):
        entry = entry if isinstance(entry, dict) else {}
        path = entry.get("path")
        path = os.path.abspath(path) if isinstance(path, str) and not remote.is_remote(path) else path
        share = f"{entry['weight'] / total:.6g}" if total else "by size"
        described.append(f"{name}: {path} @ {share}")
    data["sources"] = "; ".join(described) or None
    if not sources or explicit:
        data.pop("alpha", None)  # not used by this run: never compared
    return data


def check_changes(saved: dict, current: dict, run_dir: str, fork: bool = False) -> dict:
    """{key: (saved value, current value)} of the changes that are applied on resume (or in a fork of the run in
    ``run_dir``, which may also read another mixture); raises ``SystemExit`` naming every fixed key that changed,
    with both values."""
    changes = changed_keys(_comparable(saved), _comparable(current))
    refused = {k: v for k, v in changes.items() if _refused(k, *v) and not (fork and _under(k, FORK_MAY_CHANGE))}
    if refused:
        lines = "\n".join(f"  {k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in refused.items())
        raise SystemExit(f"error: {run_dir} was trained with other values of keys that cannot change on resume:\n"
                         f"{lines}\nNothing was changed. Restore them, or continue from its weights in a new run "
                         f"(a phase): name=<new> model.init_from={run_dir} [train.init_optimizer=true].")
    if fork:  # what the fork changes from its source (the fork itself is no change)
        return {k: v for k, v in changes.items()
                if k != "train.fork_from" and (not is_fixed(k) or _under(k, FORK_MAY_CHANGE))}
    return {k: v for k, v in changes.items() if not is_fixed(k) and k not in refused}


def record_changes(changes: dict, run_dir: str, step: int, fork: bool = False) -> None:
    """Log the applied changes and append them to ``config_changes.jsonl`` (rank 0 only)."""
    if not changes:
        return
    for key, (old, new) in changes.items():
        effect = "used only when a run starts: no effect now" if _under(key, START_ONLY) else "applied from here"
        logger.warning("%s at step %d with %s=%r (the checkpoint was trained with %r): %s",
                       "forking" if fork else "resuming", step, key, new, old, effect)
    record = {"step": step, "changes": {k: [None if v is ABSENT else v for v in pair] for k, pair in changes.items()}}
    with open(os.path.join(run_dir, CONFIG_CHANGES), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")

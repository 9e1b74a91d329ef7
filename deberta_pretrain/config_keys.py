"""Keys of config trees: the keys a schema does not know (with the nearest valid key as a suggestion) and the keys two
trees differ in.

Hydra's structured configs reject a misspelt override (``train.max_step=2``) by themselves, but an override with
``+`` (``+train.max_step=2``, which Hydra's own error message suggests) is added with the struct flag lifted and
would be ignored in silence. Every entry point therefore walks its composed config against its schema dataclass
once more; a field typed ``dict`` (``deepspeed.extra``: DeepSpeed's own config) is free-form and not walked.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing

from omegaconf import DictConfig, OmegaConf


class UnknownKeyError(ValueError):
    """A key the schema does not have; the message names it and the nearest valid key."""


def unknown_keys(cfg, schema, prefix: str = "", children: dict | None = None) -> list[str]:
    """Messages for every key of ``cfg`` (a DictConfig or dict) that ``schema`` (a dataclass or a collection of
    allowed names) does not have. ``children`` maps a dotted key to the schema of its value, for
    fields typed ``Any``/``dict`` in the dataclass whose keys are still known (a data source, a task)."""
    children = children or {}
    if not isinstance(cfg, (dict, DictConfig)):
        return []
    if dataclasses.is_dataclass(schema):
        hints = typing.get_type_hints(schema)
        fields = {f.name: _unwrap_optional(hints[f.name]) for f in dataclasses.fields(schema)}
    else:
        fields = {name: None for name in schema}
    problems = []
    for key in cfg.keys():
        dotted = f"{prefix}{key}"
        if key not in fields:
            problems.append(f"unknown key {dotted}{suggestion(str(key), fields, prefix)}")
            continue
        if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, key):
            continue
        value = cfg[key]
        child = children.get(dotted, fields[key])
        if dataclasses.is_dataclass(child) or isinstance(child, (set, frozenset, tuple, list)):
            problems += unknown_keys(value, child, f"{dotted}.", children)
    return problems


def check_keys(cfg, schema, children: dict | None = None) -> None:
    """Raise ``UnknownKeyError`` naming every key of ``cfg`` that ``schema`` does not have."""
    problems = unknown_keys(cfg, schema, children=children)
    if problems:
        raise UnknownKeyError("; ".join(problems))


def suggestion(key: str, valid, prefix: str = "") -> str:
    """`` (did you mean <nearest>?)``, or the list of valid keys when none is near."""
    nearest = difflib.get_close_matches(key, [str(k) for k in valid], n=1, cutoff=0.6)
    return f" (did you mean {prefix}{nearest[0]}?)" if nearest else f" (valid keys: {', '.join(map(str, valid))})"


def _unwrap_optional(hint):
    """``Optional[X]`` -> ``X``; anything else as it is."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def flatten(tree: dict, prefix: str = "") -> dict:
    """{dotted key: value} of nested dicts (a list, and an empty dict, is one value)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class _Absent:
    """The value of a key one of two compared trees does not have."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


def changed_keys(old: dict, new: dict) -> dict:
    """{dotted key: (old value, new value)} of every key whose value differs between the trees (``ABSENT`` where
    one of them lacks the key), sorted by key."""
    old, new = flatten(old), flatten(new)
    return {k: (old.get(k, ABSENT), new.get(k, ABSENT)) for k in sorted(old.keys() | new.keys())
            if old.get(k, ABSENT) != new.get(k, ABSENT)}

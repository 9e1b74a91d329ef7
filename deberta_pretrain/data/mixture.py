"""Mixtures of prepared datasets: each source's share, and which source feeds each position of the sample stream.

A run reads one global stream of samples (see ``sampler``). With several sources (``data.sources``), position ``g``
of that stream belongs to one source, decided by a fixed interleave of period ``Q``: over every ``Q`` consecutive
positions source ``j`` gets exactly ``q_j`` of them (``sum q_j = Q``, ``q_j / Q`` its share), placed in the order
in which the Sainte-Laguë divisor method hands out seats: the ``c``-th position of source ``j`` in a period has
the key ``(c + 1/2) / q_j``, positions are sorted by key (ties by source order). So after any prefix of ``n``
positions every source has contributed close to ``n * share`` (within one sample for two or three sources; the
deviation stays below about 1.5 samples with dozens), the assignment is a pure function of ``g`` and the shares
(no draws, no state: resuming at any step or with another world size finds the same sources), and every source's
own positions are numbered ``0, 1, 2, ...`` without gaps, which its per-epoch permutation then orders.

The period is the smallest ``Q`` (up to 2**20) that expresses the shares exactly (``5:3:2`` -> 10); other shares
(from ``alpha``, say) are rounded to multiples of 2**-20, with at least one position per period for every source
with a positive share. The tables cost 12 bytes per position of one period (12 MiB at most), whatever the corpus.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping

import numpy as np

MAX_PERIOD = 1 << 20
NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # a source name appears in metric keys: samples/<name>, validation/<name>


def check_source_name(name) -> None:
    if not isinstance(name, str):
        raise ValueError(f"data.sources: the source name {name!r} is a {type(name).__name__}; names are text "
                         f"(in YAML, quote it: '{name}')")
    if not NAME.match(name):
        raise ValueError(f"data.sources: {name!r} is not a valid source name (letters, digits, '_' and '-' only: it "
                         f"becomes part of metric keys such as samples/<name> and validation/<name>)")


def check_alpha(alpha) -> None:
    """``data.alpha`` is a finite number >= 0 (``ValueError`` naming it otherwise)."""
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"data.alpha must be a finite number >= 0, got {alpha!r}")


def source_shares(weights: Mapping[str, float | None], tokens: Mapping[str, int], alpha: float) -> dict[str, float]:
    """Each source's share of the samples, summing to 1: from explicit ``weights`` (normalised), or, when every
    weight is null, ``p_i ~ tokens_i ** alpha`` (1 = proportional to size, 0 = uniform, 0.3 = XLM-R's temperature).
    Raises ``ValueError`` naming the sources for mixed null and explicit weights, negative or non-numeric weights,
    and weights that are all zero."""
    unset = sorted(name for name, weight in weights.items() if weight is None)
    if unset and len(unset) != len(weights):
        given = sorted(name for name in weights if name not in unset)
        raise ValueError(f"data.sources: a weight is given for {', '.join(given)} but not for {', '.join(unset)}; "
                         f"give every source a weight, or none of them (shares then follow their sizes and "
                         f"data.alpha)")
    if unset:
        check_alpha(alpha)
        raw = {name: float(tokens[name]) ** alpha if tokens[name] > 0 else 0.0 for name in weights}
    else:
        raw = {}
        for name, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise ValueError(f"data.sources.{name}.weight must be a finite number >= 0, got {weight!r}")
            raw[name] = float(weight)
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"data.sources: every share is zero ({', '.join(f'{n}={w}' for n, w in raw.items())}); "
                         f"give at least one source a positive weight")
    return {name: value / total for name, value in raw.items()}


def period_quotas(shares: list[float]) -> np.ndarray:
    """Integer positions per period for each share (see the module docstring)."""
    shares = np.asarray(shares, dtype=np.float64)
    for period in range(1, 4097):  # small exact periods: 1:1 -> 2, 5:3:2 -> 10, 0.6/0.4 -> 5
        quotas = shares * period
        if np.allclose(quotas, np.round(quotas), rtol=0, atol=1e-9 * period):
            return np.round(quotas).astype(np.int64)
    quotas = np.floor(shares * MAX_PERIOD).astype(np.int64)
    quotas[(quotas == 0) & (shares > 0)] = 1
    remainder = shares * MAX_PERIOD - quotas
    for j in np.argsort(-remainder, kind="stable")[: MAX_PERIOD - quotas.sum()]:  # largest remainders first
        quotas[j] += 1
    while quotas.sum() > MAX_PERIOD:  # the minimum of one position overshot: take from the largest
        quotas[np.argmax(quotas)] -= 1
    return quotas


class Interleave:
    """Which source feeds each position of the global stream, and the source's own position number there."""

    def __init__(self, shares: list[float]):
        self.quotas = period_quotas(shares)
        self.period = int(self.quotas.sum())
        sources = np.repeat(np.arange(len(self.quotas)), self.quotas)
        ranks = np.concatenate([np.arange(q) for q in self.quotas])
        keys = (2 * ranks + 1) / (2.0 * self.quotas[sources])
        order = np.lexsort((sources, keys))
        self.source_at = sources[order].astype(np.int32)  # position in the period -> source
        self.rank_at = ranks[order].astype(np.int32)  # -> that source's own position number within the period
        self.positions_of = [np.flatnonzero(self.source_at == j) for j in range(len(self.quotas))]

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source index, the source's own position number) of each global position."""
        rounds, within = np.divmod(np.asarray(positions, dtype=np.int64), self.period)
        sources = self.source_at[within]
        return sources, rounds * self.quotas[sources] + self.rank_at[within]

    def counts(self, n: int) -> list[int]:
        """How many of the first ``n`` positions each source fed."""
        rounds, within = divmod(int(n), self.period)
        return [int(rounds * q + np.searchsorted(p, within)) for q, p in zip(self.quotas, self.positions_of)]


def stream_key(name: str | None) -> tuple[int, ...]:
    """The extra key that makes a named source's permutations and masks its own (none for a single ``data.path``,
    so a run on one path reads and masks exactly as before mixtures existed)."""
    return () if name is None else (zlib.crc32(name.encode()),)

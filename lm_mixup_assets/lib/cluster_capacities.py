"""Cluster capacities for capacity-constrained clustering: how many clusters, and the size of each, so that
the sizes sum to exactly N within [min_size, max_size] (our rule and the method's)."""

from __future__ import annotations

import numpy as np

CAPACITY_RULES = ("ours", "reference")


# --------------------------------------------------------------------------- #
# Capacities
# --------------------------------------------------------------------------- #
def draw_capacities(
    n: int,
    min_size: int = 2,
    max_size: int = 5,
    mean_cap: float = 3.0,
    std_cap: float = 1.0,
    seed: int = 42,
    rule: str = "ours",
) -> np.ndarray:
    """Cluster capacities drawn from N(mean_cap, std_cap), rounded and clipped to
    [min_size, max_size], adjusted to sum to exactly ``n``.

    ``rule`` says how the sum is brought to ``n`` (docs/method.md, clustering):

    * ``"ours"``: draw until the sum covers n, then +-1 on entries visited in a
      seeded random order;
    * ``"reference"``: the method's code: draw one value at a time until the
      sum covers n, take the excess off the last draws (each down to
      min_size, last first), then shuffle the list with the same generator.
      Same draws, same result for the same seed.  Where that cannot reach n
      (every draw already at min_size, e.g. n=5 drawn as 2, 2, 2, on which the
      method's code never finishes) the ``"ours"`` rule is used instead.

    * n == 0: empty array; n < min_size: ``[n]`` (a single, undersized cluster).
    * Otherwise every entry is within [min_size, max_size] whenever that is
      arithmetically possible (some k with k*min_size <= n <= k*max_size exists;
      always true when max_size >= 2*min_size - 1, e.g. the 2..5 default).
      If it is impossible, the sum is still n and the bounds are violated as
      little as possible (see ``_feasible_k``).
    """
    if rule not in CAPACITY_RULES:
        raise ValueError(f"capacity rule {rule!r}: choose one of {CAPACITY_RULES}")
    n = int(n)
    if n < 0:
        raise ValueError("n must be >= 0")
    lo, hi = int(min_size), int(max_size)
    lo = max(lo, 1)
    if hi < lo:
        raise ValueError(f"max_size ({max_size}) < min_size ({min_size})")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n < lo:
        return np.array([n], dtype=np.int64)
    if rule == "reference":
        caps = _reference_rule_capacities(n, lo, hi, mean_cap, std_cap, seed)
        if caps is not None:
            return caps

    rng = np.random.default_rng(seed)
    # Draw until the running sum covers n (an upper bound on the count needed
    # is ceil(n / lo) draws, so draw that many at once).
    n_draw = -(-n // lo) + 1
    caps = np.clip(np.rint(rng.normal(mean_cap, std_cap, size=n_draw)), lo, hi).astype(np.int64)
    k = int(np.searchsorted(np.cumsum(caps), n) + 1)
    k = min(k, n_draw)
    k = _feasible_k(n, lo, hi, k)
    if k > len(caps):  # only possible for infeasible bounds; pad with clipped mean
        pad = int(np.clip(round(mean_cap), lo, hi))
        caps = np.concatenate([caps, np.full(k - len(caps), pad, dtype=np.int64)])
    caps = caps[:k].copy()

    # Adjust the sum to exactly n: +-1 per pass on entries that still have
    # slack, visiting them in a seeded random order (a few vectorised passes).
    visit = rng.permutation(k)
    for _ in range(10 * (hi - lo + 2) + n):
        diff = n - int(caps.sum())
        if diff == 0:
            break
        if diff > 0:
            cand = visit[caps[visit] < hi]
            if len(cand) == 0:  # infeasible: grow beyond max_size
                cand = visit
            caps[cand[:diff]] += 1
        else:
            cand = visit[caps[visit] > lo]
            if len(cand) == 0:  # infeasible: shrink below min_size
                cand = visit[caps[visit] > 1]
            caps[cand[:-diff]] -= 1
    assert int(caps.sum()) == n
    return caps


def _reference_rule_capacities(
    n: int, lo: int, hi: int, mean_cap: float, std_cap: float, seed: int
) -> np.ndarray | None:
    """The method's capacity rule (see ``draw_capacities``); None where it cannot reach n."""
    # How many draws cover n: a probe generator draws in blocks (the same values
    # as one draw at a time); the real one then draws exactly that many, so the
    # shuffle below consumes the stream exactly where the method's code does.
    probe = np.random.default_rng(seed)
    total, k, block = 0, 0, max(64, 2 * (-(-n // lo)) // 3)
    while True:
        vals = np.clip(np.rint(probe.normal(mean_cap, std_cap, size=block)), lo, hi).astype(np.int64)
        cum = total + np.cumsum(vals)
        if cum[-1] >= n:
            k += int(np.searchsorted(cum, n, side="left")) + 1
            break
        total, k = int(cum[-1]), k + block
    rng = np.random.default_rng(seed)
    caps = np.clip(np.rint(rng.normal(mean_cap, std_cap, size=k)), lo, hi).astype(np.int64)
    excess = int(caps.sum()) - n  # < the last draw, so only the last few entries give
    for i in range(k - 1, -1, -1):
        if excess == 0:
            break
        give = min(int(caps[i]) - lo, excess)
        caps[i] -= give
        excess -= give
    if excess:
        return None
    rng.shuffle(caps)
    return caps


def _feasible_k(n: int, lo: int, hi: int, k: int) -> int:
    """Closest k to the drawn one with k*lo <= n <= k*hi, if any exists."""
    k_min = -(-n // hi)
    k_max = n // lo
    if k_min <= k_max:
        return int(min(max(k, k_min), k_max))
    # infeasible bounds (e.g. lo=4, hi=5, n=7): no k works.  Take the largest
    # k whose clusters can all reach min_size (mixup needs members), so some
    # capacity ends up above max_size instead; k >= 1 always.
    return max(1, k_max)

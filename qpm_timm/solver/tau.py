"""The redundancy threshold tau and its clique (docs/METHOD.md, "The optimisation problem").

tau is the lowest value such that the graph with an edge for every pair ``R[f, g] < tau`` contains
a clique of ``n_features`` nodes. Finding the smallest such tau exactly is a bottleneck-clique
problem (NP-hard); we use a deterministic min-max greedy from every start node: grow a set by the
node whose largest redundancy to the set is smallest (ties: smallest summed redundancy). The
best set's largest pairwise R is ``r*``; tau is the smallest R value of any pair that is strictly
above ``r*``, so every pair of the returned clique has ``R < tau`` (the clique is sound at tau) and
no tau between ``r*`` and the returned value gives a different graph.
"""
from typing import Tuple

import numpy as np

__all__ = ["find_tau_clique"]

_MAX_STARTS = 2048


def _minmax_greedy(Rs: np.ndarray, k: int, starts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Grow one set per start node; returns (sets (S, k), largest pairwise R of each set)."""
    F = Rs.shape[0]
    n = starts.size
    rows = np.arange(n)
    cur_max = Rs[starts].copy()
    cur_sum = Rs[starts].copy()
    chosen = np.zeros((n, k), dtype=np.int64)
    chosen[:, 0] = starts
    worst = np.zeros(n)
    blocked = np.zeros((n, F), dtype=bool)
    blocked[rows, starts] = True
    for j in range(1, k):
        key = cur_max + 1e-7 * cur_sum
        key[blocked] = np.inf
        nxt = np.argmin(key, axis=1)
        worst = np.maximum(worst, cur_max[rows, nxt])
        chosen[:, j] = nxt
        blocked[rows, nxt] = True
        new_rows = Rs[nxt]
        np.maximum(cur_max, new_rows, out=cur_max)
        cur_sum += new_rows
    return chosen, worst


def find_tau_clique(R: np.ndarray, n_features: int) -> Tuple[float, np.ndarray]:
    """Return (tau, clique) for the processed (strict upper triangular, >= 0) redundancy R.

    Deterministic; the clique has ``n_features`` nodes and all its pairs have ``R < tau``.
    """
    F = R.shape[0]
    Rs = R + R.T
    k = int(n_features)
    if k == 1:
        clique = np.array([0], dtype=np.int64)
        worst = 0.0
    else:
        # Start from every node (capped, lowest total redundancy first, for huge F).
        order = np.lexsort((np.arange(F), Rs.sum(axis=1)))
        starts = np.sort(order[:_MAX_STARTS])
        sets, worst_all = _minmax_greedy(Rs, k, starts)
        sums = Rs[sets[:, :, None], sets[:, None, :]].sum(axis=(1, 2))
        best = np.lexsort((np.arange(sets.shape[0]), sums, worst_all))[0]
        clique = np.sort(sets[best])
        worst = float(worst_all[best])
    above = R[R > worst]  # R is strict upper triangular and worst >= 0: the pairs above the clique's worst
    tau = float(above.min()) if above.size else float(np.nextafter(worst, np.inf))
    return tau, clique

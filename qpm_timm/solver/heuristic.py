"""Fast exact evaluation of Z(S), greedy construction and swap local search.

For a fixed selection S the best assignment of a class is its ``n_wc`` largest ``A[f, c]`` over S;
only the uniqueness constraint couples classes. :func:`assign_classes` returns the exact optimum
for S: the top sets where they are all different, else a maximum-weight class-to-set matching over
each class's best few sets, proven optimal by a private "anything else" option per class (see
there). :func:`local_search` moves one feature out and one in, scoring all swaps at once with the
closed-form deltas of the no-uniqueness objective and accepting a swap only if the exact Z improves.
"""
import heapq
import math
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from .problem import QPMProblem

__all__ = ["assign_classes", "best_start", "evaluate_selection", "greedy_selection", "local_search",
           "insertion_scores", "KBestSets"]

_FORBIDDEN = -1e12
_LOW = -1e6  # stands in for a missing (n_wc+1)-th value when n_features == n_per_class


class KBestSets:
    """Lazily enumerates the k-subsets of a value vector in order of decreasing sum.

    Best-first search over position tuples into the descending order (each subset is reached from
    the top-k subset by moving positions down, so a heap yields them in exact order; ties broken by
    the position tuple, so the order is deterministic).
    """

    def __init__(self, values: np.ndarray, k: int):
        self.order = np.argsort(-values, kind="stable")
        self.v = values[self.order]
        self.k = k
        self.m = values.size
        start = tuple(range(k))
        self.heap = [(-float(self.v[list(start)].sum()), start)]
        self.seen = {start}
        self.sets: List[Tuple[int, ...]] = []  # as sorted indices into ``values``
        self.vals: List[float] = []

    def get(self, n: int) -> int:
        """Make sure the best ``n`` subsets are enumerated; returns how many exist (<= n)."""
        while len(self.sets) < n and self.heap:
            neg, pos = heapq.heappop(self.heap)
            self.sets.append(tuple(sorted(int(self.order[p]) for p in pos)))
            self.vals.append(-neg)
            for i in range(self.k):
                nxt = pos[i] + 1
                limit = pos[i + 1] if i + 1 < self.k else self.m
                if nxt < limit:
                    child = pos[:i] + (nxt,) + pos[i + 1:]
                    if child not in self.seen:
                        self.seen.add(child)
                        heapq.heappush(self.heap, (neg + float(self.v[pos[i]] - self.v[nxt]), child))
        return len(self.sets)


def _top_sets(V: np.ndarray, k: int) -> np.ndarray:
    """(C, k) sorted row indices of each class's k largest values in V (m, C); stable ties."""
    order = np.argsort(-V, axis=0, kind="stable")
    return np.sort(order[:k].T, axis=1)


def assign_classes(V: np.ndarray, k: int) -> np.ndarray:
    """Optimal distinct k-sets for the classes given values V (m, C); returns (C, k) row indices.

    Exact: where top sets collide, solve a max-weight matching of the involved classes to their
    best ``K_c`` sets plus one private option per class worth its (K_c+1)-th best value, an upper
    bound on any set outside its list. That matching is a relaxation of the true problem; when no
    class takes its private option its solution is feasible and therefore optimal. Otherwise the
    lists of those classes double and it repeats. Classes whose top set is taken in a list join.
    """
    m, C = V.shape
    top = _top_sets(V, k)
    _, inv, counts = np.unique(top, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    if counts.max() == 1:
        return top
    owner = {tuple(top[c]): c for c in range(C) if counts[inv[c]] == 1}
    K: Dict[int, int] = {c: int(counts[inv[c]]) for c in range(C) if counts[inv[c]] > 1}
    enum: Dict[int, KBestSets] = {}
    result = top.copy()
    while True:
        changed = True
        while changed:  # closure: a class whose unique top set is listed by an included class joins
            changed = False
            for c in sorted(K):
                if c not in enum:
                    enum[c] = KBestSets(V[:, c], k)
                e = enum[c]
                e.get(K[c] + 1)
                for s in e.sets[:K[c]]:
                    o = owner.get(s)
                    if o is not None and o not in K:
                        K[o] = 1
                        changed = True
        rows = sorted(K)
        keys: Dict[Tuple[int, ...], int] = {}
        for c in rows:
            for s in enum[c].sets[:K[c]]:
                keys.setdefault(s, len(keys))
        n = len(rows)
        M = np.full((n, len(keys) + n), _FORBIDDEN)
        for i, c in enumerate(rows):
            e = enum[c]
            for s, val in zip(e.sets[:K[c]], e.vals[:K[c]]):
                M[i, keys[s]] = val
            if len(e.sets) > K[c]:
                M[i, len(keys) + i] = e.vals[K[c]]
        r, cols = linear_sum_assignment(M, maximize=True)
        taken = M[r, cols]
        on_private = [rows[i] for i, col in zip(r, cols) if col >= len(keys)]
        if np.any(taken <= _FORBIDDEN / 2):
            on_private = rows  # no feasible matching within the lists: grow all of them
        if not on_private:
            inv_keys = {j: s for s, j in keys.items()}
            for i, col in zip(r, cols):
                result[rows[i]] = inv_keys[col]
            return result
        for c in on_private:
            K[c] = 2 * K[c]


def evaluate_selection(problem: QPMProblem, S: np.ndarray) -> Tuple[float, np.ndarray]:
    """Exact Z(S) and its optimal assignment (C, n_features) bool (columns follow sorted S)."""
    S = np.sort(np.asarray(S, dtype=np.int64))
    sets = assign_classes(problem.A[S], problem.n_per_class)
    W = np.zeros((problem.num_classes, S.size), dtype=bool)
    np.put_along_axis(W, sets, True, axis=1)
    return problem.objective(S, W), W


def greedy_selection(problem: QPMProblem) -> np.ndarray:
    """Add features one at a time by the largest gain of the no-uniqueness Z (vectorised)."""
    A, P, B = problem.A, problem.penalty, problem.B
    F, C = A.shape
    k, n = problem.n_per_class, problem.n_features
    chosen = np.zeros(F, dtype=bool)
    top = np.full((k, C), -np.inf)  # current top-k values per class, row 0 the smallest
    ps = np.zeros(F)
    for j in range(n):
        if j < k:
            gain_a = A.sum(axis=1)
        else:
            gain_a = np.maximum(A - top[0], 0.0).sum(axis=1)
        gain = problem.z_a_factor * gain_a - ps + B
        gain[chosen] = -np.inf
        g = int(np.argmax(gain))
        chosen[g] = True
        ps += P[g]
        top = np.sort(np.vstack([top, A[g][None]]), axis=0)[1:]
    return np.flatnonzero(chosen)


def _swap_deltas(problem: QPMProblem, S: np.ndarray, in_s: np.ndarray) -> np.ndarray:
    """Change of the no-uniqueness Z for every swap (out S[i], in g): (m, F) matrix, -inf for g in S."""
    A, P, B = problem.A, problem.penalty, problem.B
    k = problem.n_per_class
    V = A[S]
    m, C = V.shape
    order = np.argsort(-V, axis=0, kind="stable")  # one sort gives the k-th and (k+1)-th values and the top sets
    cols = np.arange(C)
    tk = V[order[k - 1], cols]
    t1 = V[order[k], cols] if m > k else np.full(C, _LOW)
    mask = np.zeros_like(V)
    np.put_along_axis(mask, order[:k], 1.0, axis=0)
    loss = (mask * (V - t1)).sum(axis=1)
    hi = np.maximum(A - tk, 0.0)
    base = hi.sum(axis=1)
    corr = mask @ (np.maximum(A - t1, 0.0) - hi).T
    d_a = problem.z_a_factor * (corr + base[None, :] - loss[:, None])
    ps = P[:, S].sum(axis=1)
    d_r = -(ps[None, :] - P[S, :]) + ps[S][:, None]
    d_b = B[None, :] - B[S][:, None]
    delta = d_a + d_r + d_b
    delta[:, in_s] = -np.inf
    return delta


def insertion_scores(problem: QPMProblem, S: np.ndarray) -> np.ndarray:
    """Gain of the no-uniqueness Z from adding each feature to S (F,), -inf for features in S."""
    A, k = problem.A, problem.n_per_class
    tk = -np.partition(-A[S], k - 1, axis=0)[k - 1]
    score = problem.z_a_factor * np.maximum(A - tk, 0.0).sum(axis=1) \
        - problem.penalty[:, S].sum(axis=1) + problem.B
    score[S] = -np.inf
    return score


def local_search(problem: QPMProblem, S: np.ndarray, deadline: float = math.inf, tries: int = 8
                 ) -> Tuple[np.ndarray, float, np.ndarray, int]:
    """Best-improvement 1-swap local search on the exact Z; returns (S, Z, W, number of scans).

    Swaps are ranked by their closed-form delta; the best ``tries`` with a positive delta are
    evaluated exactly (uniqueness included) and the first that improves Z is taken. Stops at a
    local optimum or at ``deadline`` (time.perf_counter()).
    """
    S = np.sort(np.asarray(S, dtype=np.int64))
    Z, W = evaluate_selection(problem, S)
    in_s = np.zeros(problem.num_all_features, dtype=bool)
    in_s[S] = True
    scans = 0
    while time.perf_counter() < deadline:
        scans += 1
        delta = _swap_deltas(problem, S, in_s)
        flat = delta.ravel()
        n_try = min(tries, flat.size)
        cand = np.argpartition(-flat, n_try - 1)[:n_try]
        cand = cand[np.lexsort((cand, -flat[cand]))]
        moved = False
        for idx in cand:
            if not flat[idx] > 1e-9:
                break
            i, g = divmod(int(idx), flat.size // S.size)
            S2 = np.sort(np.concatenate([np.delete(S, i), [g]]))
            Z2, W2 = evaluate_selection(problem, S2)
            if Z2 > Z + 1e-9:
                in_s[S[i]] = False
                in_s[g] = True
                S, Z, W = S2, Z2, W2
                moved = True
                break
        if not moved:
            break
    return S, Z, W, scans


def best_start(problem: QPMProblem, deadline: float = math.inf, say: Callable[[str], None] = lambda msg: None,
               start: Optional[np.ndarray] = None) -> Tuple[np.ndarray, float, np.ndarray]:
    """Phase 1 of ``solve_qpm``: the given ``start`` selection, the tau-clique (when tau was derived) and the
    greedy selection, each descended by :func:`local_search`; returns the best (S, Z, W), the earlier start on ties.

    Raises ValueError when ``deadline`` passes before the greedy start is built.
    """
    starts = [("greedy", greedy_selection(problem))]
    if problem.clique is not None:
        starts.insert(0, ("tau-clique", problem.clique))
    if start is not None:
        starts.insert(0, ("given", np.asarray(start, dtype=np.int64)))
    if time.perf_counter() > deadline:
        raise ValueError("the time limit expired before a feasible solution was found "
                         "(the greedy start alone took longer); raise time_limit")
    best = None
    for name, S0 in starts:
        S, Z, W, _ = local_search(problem, S0, deadline)
        say(f"start {name}: Z={Z:.6f} after local search")
        if best is None or Z > best[1] + 1e-12:
            best = (S, Z, W)
    return best

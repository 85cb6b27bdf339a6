"""A provable upper bound on Z that sees the redundancy term Z_R: the set-based Lagrangian.

docs/METHOD.md, "The set bound". Notation of :mod:`.bound`: ``a = z_a_factor * A`` (F, C), ``b = B``,
``p = problem.penalty`` (symmetric, ``p >= 0``, so ``Z_R = -sum_{f<g in S} p[f, g]``). Every class ``c`` has a
list ``L_c`` of candidate features (``cand[c]``, distinct). The multipliers are

- ``nu`` (C,): the price of one of a class's ``n_wc`` places (as in :mod:`.bound`);
- ``mu`` (C, L) ``>= 0``: the price class ``c`` pays for using its candidate ``f``; for a feature ``f`` outside
  ``L_c``, ``mu[c, f] = max(a[f, c] - nu_c, 0)``;
- ``lam`` (C, L(L-1)/2) ``>= 0``: the share of ``p[f, g]`` that class ``c`` pays when it uses both candidates
  ``f, g``, with ``Lam[f, g] = sum_c lam[c, fg] <= p[f, g]`` for every pair (:func:`project_multipliers`
  enforces both conditions, so any input is made valid).

A node of the branch and bound (:mod:`.certify`) fixes features in (``F1`` in S) and out (``F0`` outside S); the
root has none. With ``q = p - Lam >= 0`` (the part of each pair's penalty no class pays) define

    h_c = max over J in L_c minus F0, |J| <= n_wc, of
          sum_{f in J} (a[f, c] - mu[c, f]) - sum_{f<g in J} lam[c, fg] + top_{n_wc - |J|} {min(a[f, c], nu_c) :
          f not in L_c, f not in F0}
    g_f = b_f + sum_c mu[c, f]
    D   = sum_c h_c + sum_{f in F1} g_f - sum_{f<g in F1} q[f, g]
          + (sum of the n_f* - |F1| largest g_f - sum_{h in F1} q[f, h] over the free features f)

**Validity: D >= Z(S, W) for every feasible (S, W) with F1 in S and F0 outside S, whatever the multipliers
(after projection).** Let ``T_c`` (``|T_c| = n_wc``, in S) be the features of class c and ``J_c = T_c ∩ L_c``.

1. *Redundancy.* Charge every pair ``{f, g}`` of S ``lam[c, fg]`` for each class with ``f, g in J_c`` and
   ``q[f, g]`` if ``f`` or ``g`` is in F1. The charges of one pair sum to at most ``Lam[f, g] + q[f, g] =
   p[f, g]`` (``lam >= 0``), so ``Z_R = -sum p <= -sum_c sum_{f<g in J_c} lam[c, fg] - sum_{pairs of S meeting
   F1} q``; and ``q >= 0``, so the pairs of S that meet F1 may be counted over ``F1 x S`` only.
2. *Coupling.* ``sum_{f in T_c} a[f, c] = sum_{f in T_c} (a[f, c] - mu[c, f]) + sum_{f in T_c} mu[c, f]``, and
   ``sum_c sum_{f in T_c} mu[c, f] <= sum_{f in S} sum_c mu[c, f]`` (``mu >= 0``, ``T_c`` in S).
3. *Classes.* For each class, ``sum_{f in T_c}(a - mu) - sum_{J_c} lam <= h_c``: J_c is one of the sets of the
   maximum (T_c avoids F0), and its ``n_wc - |J_c|`` features outside L_c give ``a - mu = min(a, nu_c)``, at most
   the top sum.
4. *Selection.* What remains, ``sum_{f in S} g_f - sum_{f in F1, h in S, pair} q``, splits into the fixed part
   and ``sum_{f in S minus F1} (g_f - sum_{h in F1} q[f, h])``: at most the top ``n_f* - |F1|`` over the free.

So ``Z <= D``. Uniqueness and CHiQPM's pairs are not used, so D bounds the problem with them too. With no
candidates and ``lam = 0`` D is :func:`.bound.lagrangian_bound`'s D(nu); with candidates it is the Lagrangian dual
of a linear relaxation in which each class picks a convex combination of candidate sets (``x_cJ``) and pays
``y_fg >= sum_{J ∋ f, g} x_cJ`` (``lam`` are that row's multipliers); :class:`SetLP` solves that LP with
HiGHS (column generation over the sets, deterministic simplex iteration caps) only to choose the multipliers:
the bound returned is always D of the projected multipliers, evaluated in float64 plus a rounding margin.
"""
import functools
import itertools
import time
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import numpy as np

from .pairbound import paired_class_part
from .problem import QPMProblem

__all__ = ["SetMultipliers", "SetLP", "candidate_lists", "class_values", "pair_totals", "project_multipliers",
           "selection_values", "set_bound", "set_lagrangian_bound", "start_multipliers", "subset_tables"]

_ROUNDING = 1e-9   # relative margin for float64 rounding in D (as in .bound)
_NEG = -1e30       # "not allowed" value of a set or an outside place


@dataclass(frozen=True)
class SetMultipliers:
    """The multipliers of the module docstring: ``cand`` (C, L) int64, ``nu`` (C,), ``mu`` (C, L),
    ``lam`` (C, L(L-1)/2) over the candidate position pairs of :func:`subset_tables` (i < j, lexicographic)."""
    cand: np.ndarray
    nu: np.ndarray
    mu: np.ndarray
    lam: np.ndarray


@functools.lru_cache(maxsize=8)
def subset_tables(L: int, k: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All subsets J of ``range(L)`` with ``|J| <= k``: (member (nsub, L) float, pair member (nsub, npairs) float,
    sizes (nsub,) int, pairs (npairs, 2) int); subsets by size, then lexicographic (deterministic)."""
    pairs = np.array(list(itertools.combinations(range(L), 2)), dtype=np.int64).reshape(-1, 2)
    pos = {tuple(pq): i for i, pq in enumerate(pairs.tolist())}
    subsets = [J for m in range(min(k, L) + 1) for J in itertools.combinations(range(L), m)]
    member = np.zeros((len(subsets), L))
    pmember = np.zeros((len(subsets), len(pairs)))
    for r, J in enumerate(subsets):
        member[r, list(J)] = 1.0
        for pq in itertools.combinations(J, 2):
            pmember[r, pos[pq]] = 1.0
    sizes = np.array([len(J) for J in subsets], dtype=np.int64)
    for arr in (member, pmember, sizes, pairs):
        arr.setflags(write=False)
    return member, pmember, sizes, pairs


def candidate_lists(problem: QPMProblem, size: int, include: Optional[np.ndarray] = None) -> np.ndarray:
    """(C, size) candidates: each class's ``size`` largest ``A[:, c]`` (index order on ties); ``include``
    ((C, m) features, e.g. an incumbent's sets) are put first, so that they are candidates too."""
    F, C = problem.shape
    size = min(int(size), F)
    order = np.lexsort((np.broadcast_to(np.arange(F)[:, None], (F, C)), -problem.A), axis=0)  # (F, C)
    cand = np.empty((C, size), dtype=np.int64)
    for c in range(C):
        first = [] if include is None else list(dict.fromkeys(int(f) for f in include[c]))[:size]
        rest = [int(f) for f in order[:, c] if int(f) not in set(first)][: size - len(first)]
        cand[c] = np.sort(np.array(first + rest, dtype=np.int64))
    return cand


def project_multipliers(problem: QPMProblem, m: SetMultipliers) -> SetMultipliers:
    """Valid multipliers closest in form to ``m``: ``mu, lam >= 0``, and every pair's ``lam`` scaled down so that
    ``sum_c lam[c, fg] <= p[f, g]`` (module docstring); candidates checked (distinct, in range)."""
    cand = np.asarray(m.cand, dtype=np.int64)
    C = problem.num_classes
    if cand.ndim != 2 or cand.shape[0] != C:
        raise ValueError(f"cand must have shape (C, L) = ({C}, L), got {cand.shape}")
    L = cand.shape[1]
    if cand.size and (cand.min() < 0 or cand.max() >= problem.num_all_features):
        raise ValueError(f"candidates must be features in [0, {problem.num_all_features})")
    if np.any(np.diff(np.sort(cand, axis=1), axis=1) == 0):
        raise ValueError("each class's candidates must be distinct")
    _, _, _, pairs = subset_tables(L, problem.n_per_class)
    nu = np.asarray(m.nu, dtype=np.float64).reshape(C)
    mu = np.maximum(np.asarray(m.mu, dtype=np.float64).reshape(C, L), 0.0)
    lam = np.maximum(np.asarray(m.lam, dtype=np.float64).reshape(C, len(pairs)), 0.0)
    if pairs.size:
        f, g = cand[:, pairs[:, 0]], cand[:, pairs[:, 1]]
        lam = np.where(problem.penalty[f, g] > 0, lam, 0.0)
        total = np.zeros_like(problem.penalty)
        np.add.at(total, (f, g), lam)
        total = total + total.T
        p = problem.penalty
        scale = np.where(total > p, p / np.where(total > 0, total, 1.0), 1.0)
        lam = lam * scale[f, g]
    return SetMultipliers(cand=cand, nu=nu, mu=mu, lam=lam)


def pair_totals(problem: QPMProblem, m: SetMultipliers) -> np.ndarray:
    """``Lam`` (F, F) symmetric: ``sum_c lam[c, fg]``."""
    _, _, _, pairs = subset_tables(m.cand.shape[1], problem.n_per_class)
    Lam = np.zeros_like(problem.penalty)
    if pairs.size:
        np.add.at(Lam, (m.cand[:, pairs[:, 0]], m.cand[:, pairs[:, 1]]), m.lam)
    return Lam + Lam.T


def _top_sum(x: np.ndarray, n: int) -> float:
    return float(np.sort(x)[x.size - n:].sum()) if n > 0 else 0.0


def class_values(problem: QPMProblem, m: SetMultipliers, fixed_out: np.ndarray) -> np.ndarray:
    """(C, nsub) value of every candidate set J of every class: ``sum_J (a - mu) - sum_J lam + top of the rest``
    (the inner expression of h_c); ``_NEG`` for sets with a feature of F0 or too few outside places."""
    a = problem.z_a_factor * problem.A
    C, L = m.cand.shape
    k = problem.n_per_class
    member, pmember, sizes, _ = subset_tables(L, k)
    cols = np.repeat(np.arange(C), L)
    outside = np.minimum(a, m.nu)                        # (F, C): a - mu outside the candidates
    outside[m.cand.ravel(), cols] = _NEG
    outside[fixed_out] = _NEG
    top = -np.sort(-outside, axis=0)[:k]                 # (k, C) best outside places
    prefix = np.vstack([np.zeros((1, C)), np.cumsum(np.maximum(top, _NEG), axis=0)])  # (k+1, C)
    v = a[m.cand, np.arange(C)[:, None]] - m.mu          # (C, L)
    banned = np.isin(m.cand, fixed_out).astype(np.float64)
    vals = v @ member.T - m.lam @ pmember.T + prefix[k - sizes].T
    vals = np.where((banned @ member.T > 0) | (vals < 0.5 * _NEG), _NEG, vals)
    return vals


def selection_values(problem: QPMProblem, m: SetMultipliers) -> np.ndarray:
    """``g_f = b_f + sum_c mu[c, f]`` (F,), with ``mu[c, f] = max(a - nu_c, 0)`` off the candidates."""
    a = problem.z_a_factor * problem.A
    C, L = m.cand.shape
    mu_full = np.maximum(a - m.nu, 0.0)
    mu_full[m.cand.ravel(), np.repeat(np.arange(C), L)] = m.mu.ravel()
    return problem.B + mu_full.sum(axis=1)


def set_lagrangian_bound(problem: QPMProblem, m: SetMultipliers, fixed_in: Sequence[int] = (),
                         fixed_out: Sequence[int] = (), with_pairs: bool = True) -> float:
    """D of the module docstring for the projected ``m`` plus a rounding margin: an upper bound on Z over the
    feasible solutions with ``fixed_in`` selected and ``fixed_out`` not; ``-inf`` when none can exist. With the
    problem's forced pairs (``with_pairs``, not idealised) the classes' part is :mod:`.pairbound`'s P (a bound of
    the problem with the pairs only); otherwise ``sum_c h_c`` (a bound with or without them)."""
    m = project_multipliers(problem, m)
    F = problem.num_all_features
    n = problem.n_features
    F1 = np.unique(np.asarray(fixed_in, dtype=np.int64))
    F0 = np.unique(np.asarray(fixed_out, dtype=np.int64))
    if np.intersect1d(F0, F1).size or F1.size > n or F - F0.size < n:
        return -np.inf
    vals = class_values(problem, m, F0)
    if np.any(vals.max(axis=1) < 0.5 * _NEG):
        return -np.inf
    if with_pairs and problem.pairs is not None and not problem.idealize:
        member, _, sizes, _ = subset_tables(m.cand.shape[1], problem.n_per_class)
        classes = paired_class_part(problem.pairs, m.cand, vals, member, sizes, problem.n_per_class)
        if classes < 0.5 * _NEG:
            return -np.inf
    else:
        classes = float(vals.max(axis=1).sum())
    g = selection_values(problem, m)
    q = np.maximum(problem.penalty - pair_totals(problem, m), 0.0)
    free = np.ones(F, dtype=bool)
    free[F0] = False
    free[F1] = False
    fixed = float(g[F1].sum() - 0.5 * q[np.ix_(F1, F1)].sum())
    g_free = g - q[:, F1].sum(axis=1)
    d = classes + fixed + _top_sum(g_free[free], n - F1.size)
    return d + _ROUNDING * (1.0 + abs(d))


def start_multipliers(problem: QPMProblem, cand: np.ndarray, nu: np.ndarray) -> SetMultipliers:
    """The multipliers of :func:`.bound.lagrangian_bound` in this form (``mu = max(a - nu, 0)`` on the
    candidates, ``lam = 0``): D is then at most :func:`.bound.lagrangian_bound`'s D(nu)."""
    a = problem.z_a_factor * problem.A
    C, L = cand.shape
    mu = np.maximum(a[cand, np.arange(C)[:, None]] - nu[:, None], 0.0)
    npairs = L * (L - 1) // 2
    return SetMultipliers(cand=cand, nu=np.asarray(nu, dtype=np.float64), mu=mu, lam=np.zeros((C, npairs)))


class SetLP:
    """The linear relaxation of the module docstring in HiGHS, grown by column generation; it only chooses
    multipliers (:meth:`multipliers`), the bound is :func:`set_lagrangian_bound` of them.

    Columns: ``s_f`` (all F), ``y_fg`` (penalised candidate pairs), ``x_cJ`` (candidate sets of class c, added by
    pricing), ``w_cf`` (outside places, added by pricing). Rows: ``sum_J x_cJ = 1``, ``sum_J |J| x_cJ + sum_f
    w_cf = n_wc`` (dual ``nu_c``), ``sum_{J ∋ f} x_cJ <= s_f`` (dual ``mu``), ``w_cf <= s_f``, ``sum s = n_f*``,
    ``sum_{J ∋ f, g} x_cJ <= y_fg`` (dual ``lam``). Objective: ``sum a x + sum a w + sum b s - sum p y``. The
    work is bounded by simplex iterations (HiGHS' count, deterministic; one thread), never by the clock.
    """

    def __init__(self, problem: QPMProblem, cand: np.ndarray, start_sets: np.ndarray):
        import highspy

        self.problem, self.cand = problem, np.asarray(cand, dtype=np.int64)
        F, C = problem.shape
        L, k = self.cand.shape[1], problem.n_per_class
        self.member, self.pmember, self.sizes, self.pairs = subset_tables(L, k)
        self.a = problem.z_a_factor * problem.A
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.setOptionValue("random_seed", 0)
        h.setOptionValue("presolve", "off")
        self.h, self.inf = h, highspy.kHighsInf
        h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        self.iterations = 0
        # s columns, y columns
        h.addCols(F, problem.B.astype(np.float64), np.zeros(F), np.ones(F), 0, np.zeros(1, np.int32),
                  np.zeros(1, np.int32), np.zeros(1))
        f, g = self.cand[:, self.pairs[:, 0]], self.cand[:, self.pairs[:, 1]]
        lo, hi = np.minimum(f, g), np.maximum(f, g)
        penal = problem.penalty[lo, hi] > 0                                     # (C, npairs)
        keys = np.unique(lo[penal] * F + hi[penal])
        self.y_col = {int(key): F + i for i, key in enumerate(keys)}
        ny = keys.size
        if ny:
            h.addCols(ny, -problem.penalty[keys // F, keys % F], np.zeros(ny), np.full(ny, self.inf), 0,
                      np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(1))
        # rows: one_c (0..C-1), k_c (C..2C-1), card (2C), cpl (2C+1 + c L + i), pair rows
        self._add_rows(np.ones(C), np.ones(C), [[] for _ in range(C)])
        self._add_rows(np.full(C, k), np.full(C, k), [[] for _ in range(C)])
        self._add_rows([problem.n_features], [problem.n_features], [[(j, 1.0) for j in range(F)]])
        self.cpl0 = 2 * C + 1
        self._add_rows(np.full(C * L, -self.inf), np.zeros(C * L),
                       [[(int(self.cand[c, i]), -1.0)] for c in range(C) for i in range(L)])
        self.pair_row = np.full((C, len(self.pairs)), -1, dtype=np.int64)
        rows = []
        r = self.cpl0 + C * L
        for c, j in zip(*np.nonzero(penal)):
            self.pair_row[c, j] = r
            rows.append([(self.y_col[int(lo[c, j] * F + hi[c, j])], -1.0)])
            r += 1
        self._add_rows(np.full(len(rows), -self.inf), np.zeros(len(rows)), rows)
        self.x_cols, self.w_cols = [], []        # (c, subset index), (c, feature)
        self.have_x, self.have_w = set(), set()
        pos = {(c, int(ff)): i for c in range(C) for i, ff in enumerate(self.cand[c])}
        self.index = {tuple(np.flatnonzero(row).tolist()): r for r, row in enumerate(self.member)}
        xs, ws = [], []
        for c in range(C):
            J = tuple(sorted(pos[(c, int(ff))] for ff in start_sets[c] if (c, int(ff)) in pos))
            for m in range(len(J) + 1):          # the start set and its prefixes
                xs.append((c, self.index[J[:m]]))
            ws += [(c, int(ff)) for ff in start_sets[c] if (c, int(ff)) not in pos]
        self.add_sets(xs)
        self.add_places(ws)

    def _add_rows(self, lower, upper, entries) -> None:
        starts, idx, val = [], [], []
        for e in entries:
            starts.append(len(idx))
            idx += [j for j, _ in e]
            val += [v for _, v in e]
        self.h.addRows(len(entries), np.asarray(lower, np.float64), np.asarray(upper, np.float64), len(idx),
                       np.asarray(starts, np.int32), np.asarray(idx, np.int32), np.asarray(val, np.float64))

    def add_sets(self, sets) -> int:
        """Add the columns ``x_cJ`` for (class, subset index) pairs not in the LP yet; returns how many."""
        C, L = self.cand.shape
        costs, starts, idx, val = [], [], [], []
        for c, r in sets:
            if (c, r) in self.have_x:
                continue
            self.have_x.add((c, r))
            self.x_cols.append((c, r))
            J = np.flatnonzero(self.member[r])
            costs.append(float(self.a[self.cand[c, J], c].sum()))
            starts.append(len(idx))
            e = [(c, 1.0), (C + c, float(J.size))] + [(self.cpl0 + c * L + int(i), 1.0) for i in J]
            e += [(int(self.pair_row[c, j]), 1.0) for j in np.flatnonzero(self.pmember[r])
                  if self.pair_row[c, j] >= 0]
            e = [(i, v) for i, v in e if v != 0.0]
            idx += [i for i, _ in e]
            val += [v for _, v in e]
        if costs:
            n = len(costs)
            self.h.addCols(n, np.asarray(costs), np.zeros(n), np.full(n, self.inf), len(idx),
                           np.asarray(starts, np.int32), np.asarray(idx, np.int32), np.asarray(val))
        return len(costs)

    def add_places(self, places) -> int:
        """Add the columns ``w_cf`` with their rows ``w_cf <= s_f`` for (class, outside feature) pairs."""
        C = self.cand.shape[0]
        new = [(c, f) for c, f in places if (c, f) not in self.have_w]
        if not new:
            return 0
        first = self.h.getNumRow()
        self._add_rows(np.full(len(new), -self.inf), np.zeros(len(new)), [[(f, -1.0)] for _, f in new])
        n = len(new)
        idx = np.array([[C + c, first + i] for i, (c, _) in enumerate(new)], dtype=np.int32).ravel()
        self.h.addCols(n, np.array([self.a[f, c] for c, f in new]), np.zeros(n), np.full(n, self.inf), 2 * n,
                       np.arange(0, 2 * n, 2, dtype=np.int32), idx, np.ones(2 * n))
        for cf in new:
            self.have_w.add(cf)
            self.w_cols.append(cf)
        return n

    def fix(self, fixed_in: Sequence[int] = (), fixed_out: Sequence[int] = ()) -> None:
        """Bounds of ``s``: 1 on ``fixed_in``, 0 on ``fixed_out``, [0, 1] elsewhere (a node of the branch and
        bound)."""
        F = self.problem.num_all_features
        lo, hi = np.zeros(F), np.ones(F)
        lo[np.asarray(fixed_in, dtype=np.int64)] = 1.0
        hi[np.asarray(fixed_out, dtype=np.int64)] = 0.0
        self.h.changeColsBounds(F, np.arange(F, dtype=np.int32), lo, hi)

    def solve(self, iterations: int) -> bool:
        """Re-optimise from the current basis with at most ``iterations`` simplex iterations; True if optimal."""
        import highspy

        self.h.setOptionValue("simplex_iteration_limit", int(max(1, iterations)))
        self.h.run()
        self.iterations += int(self.h.getInfo().simplex_iteration_count)
        return self.h.getModelStatus() == highspy.HighsModelStatus.kOptimal

    def multipliers(self) -> Tuple[SetMultipliers, np.ndarray]:
        """(multipliers from the row duals, pi (C,) the duals of ``sum_J x_cJ = 1``)."""
        C, L = self.cand.shape
        y = np.asarray(self.h.getSolution().row_dual)
        pi, nu = y[:C], y[C:2 * C]
        mu = y[self.cpl0: self.cpl0 + C * L].reshape(C, L)
        lam = np.where(self.pair_row >= 0, y[np.maximum(self.pair_row, 0)], 0.0)
        return SetMultipliers(cand=self.cand, nu=nu.copy(), mu=mu.copy(), lam=lam), pi.copy()

    def price(self, per_class: int, fixed_out: Sequence[int] = (), tol: float = 1e-9) -> int:
        """Add up to ``per_class`` sets of largest positive reduced cost per class and every outside place of
        positive reduced cost; returns the number of columns added (0: the LP over all columns is optimal)."""
        m, pi = self.multipliers()
        C, L = self.cand.shape
        F0 = np.asarray(fixed_out, dtype=np.int64)
        v = self.a[self.cand, np.arange(C)[:, None]] - m.mu - m.nu[:, None]
        rc = v @ self.member.T - m.lam @ self.pmember.T - pi[:, None]
        if F0.size:
            rc[(np.isin(self.cand, F0).astype(np.float64) @ self.member.T) > 0] = -np.inf
        sets = []
        for c in range(C):
            order = np.argsort(-rc[c], kind="stable")[: per_class * 4]
            picked = [int(r) for r in order if rc[c, r] > tol and (c, int(r)) not in self.have_x][:per_class]
            sets += [(c, r) for r in picked]
        rcw = self.a - m.nu                                   # (F, C) reduced cost of a new w_cf (its row dual 0)
        rcw[self.cand.ravel(), np.repeat(np.arange(C), L)] = -np.inf
        rcw[F0] = -np.inf
        places = []
        for c in range(C):
            order = np.argsort(-rcw[:, c], kind="stable")
            places += [(c, int(f)) for f in order if rcw[f, c] > tol and (c, int(f)) not in self.have_w][
                :4 * per_class]
        return self.add_sets(sets) + self.add_places(places)


def set_bound(problem: QPMProblem, nu: np.ndarray, start_sets: np.ndarray, candidates: int = 10,
              rounds: int = 30, per_class: int = 4, iterations: int = 200_000,
              say=lambda msg: None) -> Tuple[float, SetMultipliers, SetLP]:
    """(bound, multipliers, the LP): the set bound of the module docstring with ``candidates`` per class (the
    classes' largest A, and their ``start_sets`` (C, n_wc), e.g. the incumbent's), multipliers from
    :class:`SetLP` after at most ``rounds`` pricing rounds and ``iterations`` simplex iterations in all; the best
    of the start multipliers (today's ``nu``) and every round's. Deterministic (work bounded by counts)."""
    t0 = time.perf_counter()
    cand = candidate_lists(problem, candidates, include=start_sets)
    best_m = start_multipliers(problem, cand, np.asarray(nu, dtype=np.float64))
    best = set_lagrangian_bound(problem, best_m)
    lp = SetLP(problem, cand, start_sets)
    # warm start from today's multipliers: their best sets per class and the outside places they price in
    vals = class_values(problem, best_m, np.zeros(0, dtype=np.int64))
    top = np.argsort(-vals, axis=1, kind="stable")[:, :per_class]
    lp.add_sets([(c, int(r)) for c in range(problem.num_classes) for r in top[c]])
    a = problem.z_a_factor * problem.A
    inside = np.zeros(a.shape, dtype=bool)
    inside[cand.ravel(), np.repeat(np.arange(problem.num_classes), cand.shape[1])] = True
    fs, cs = np.nonzero((a > best_m.nu) & ~inside)
    lp.add_places([(int(c), int(f)) for f, c in zip(fs, cs)])
    for r in range(rounds):
        left = iterations - lp.iterations
        if left <= 0:
            break
        lp.solve(left)
        m, _ = lp.multipliers()
        d = set_lagrangian_bound(problem, m)
        if d < best:
            best, best_m = d, project_multipliers(problem, m)
        added = lp.price(per_class)
        say(f"set bound round {r} ({time.perf_counter() - t0:.1f}s): LP {lp.h.getObjectiveValue():.4f} D {d:.4f} "
            f"best {best:.4f} (+{added} columns, {lp.iterations} iterations)")
        if not added:
            break
    return best, replace(best_m), lp

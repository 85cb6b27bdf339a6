"""CP-SAT models of the QPM problem: the full (authors') formulation and the LNS neighbourhood model.

Quantisation: CP-SAT needs integer coefficients. Every objective coefficient ``v`` (``z_a_factor *
A[f, c]`` per assignment, ``B[f]`` per feature, ``-R_tilde[f, g]`` per penalised pair) becomes
``round(v * Q)`` with ``Q = 1e6 / max|v|`` (so the largest coefficient is 10^6). A solution's
quantised objective differs from its float objective by at most ``0.5 / Q`` per active term;
:attr:`QuantisedObjective.slack` bounds that over any feasible solution, and every bound reported
in float units adds it. Reported objectives are always recomputed from the float data.

Parameters (:func:`sat_parameters`): CP-SAT stops at ``max_deterministic_time`` (a count of
operations, not seconds). One worker searches sequentially; several run CP-SAT's interleaved search
(``interleave_search``: tasks run in batches of a fixed size and their results are merged in a fixed
order at the end of each batch, "deterministic independently of num_workers" in OR-Tools' parameter
documentation, still marked experimental there). The batch size is fixed here rather than OR-Tools'
default of 3 x workers, so 2, 3 or 4 workers give the same search (tested; more threads would idle);
one worker is a different, equally deterministic search. The wall-clock ``max_time_in_seconds`` is only a safety
cap, and :func:`run_sat` reports when it, not the deterministic limit, ended a search.
"""
from dataclasses import dataclass
from itertools import combinations
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from ortools.sat.python import cp_model

from .heuristic import KBestSets
from .problem import QPMProblem

__all__ = ["sat_parameters", "SatRun", "run_sat", "FullModel", "build_full_model", "forced_pair_constraints",
           "shared_vars", "solve_neighbourhood"]

_Q_TARGET = 1e6
_BATCH = 4  # tasks per interleaved batch, independent of the number of workers


def sat_parameters(solver: cp_model.CpSolver, workers: int, seed: int, det_time: float,
                   wall_cap: float, log: bool = False) -> None:
    """Deterministic CP-SAT settings (see module docstring)."""
    p = solver.parameters
    p.num_workers = max(1, int(workers))
    p.interleave_search = p.num_workers > 1
    if p.interleave_search:
        p.interleave_batch_size = _BATCH
    p.random_seed = int(seed)
    p.max_deterministic_time = max(1e-3, float(det_time))
    p.max_time_in_seconds = max(1e-3, float(wall_cap))
    p.log_search_progress = bool(log)


@dataclass
class SatRun:
    """One CP-SAT solve: the solver (for values and bounds), its status, the deterministic time it
    spent and whether the wall-clock cap ended it before a proof or its deterministic limit."""
    solver: cp_model.CpSolver
    status: int
    spent: float
    cut_by_wall_clock: bool

    @property
    def has_solution(self) -> bool:
        return self.status in (cp_model.OPTIMAL, cp_model.FEASIBLE)

    @property
    def optimal(self) -> bool:
        return self.status == cp_model.OPTIMAL


def run_sat(model: cp_model.CpModel, workers: int, seed: int, det_time: float, wall_cap: float) -> SatRun:
    """Solve ``model`` with :func:`sat_parameters`. A search that ends without a proof spent its whole
    deterministic limit unless the wall clock stopped it first (that is how the cut is detected)."""
    solver = cp_model.CpSolver()
    sat_parameters(solver, workers, seed, det_time, wall_cap)
    status = solver.solve(model)
    spent = float(solver.response_proto.deterministic_time)
    proven = status in (cp_model.OPTIMAL, cp_model.INFEASIBLE)
    limit = solver.parameters.max_deterministic_time
    return SatRun(solver, status, spent, not proven and spent < limit * (1 - 1e-9))


def shared_vars(m: cp_model.CpModel, row_a: Sequence[cp_model.IntVar], row_b: Sequence[cp_model.IntVar],
                ge_and: bool = True, le_and: bool = True) -> List[cp_model.IntVar]:
    """One boolean ``y_j`` per column with ``y_j >= row_a[j] AND row_b[j]`` (``ge_and``) and ``y_j <= ...``
    (``le_and``): their sum is then >= / <= / = the number of shared features."""
    ys = []
    for wa, wb in zip(row_a, row_b):
        y = m.new_bool_var("")
        if ge_and:
            m.add_bool_or([wa.Not(), wb.Not(), y])
        if le_and:
            m.add_implication(y, wa)
            m.add_implication(y, wb)
        ys.append(y)
    return ys


def forced_pair_constraints(m: cp_model.CpModel, W: Sequence[Sequence[cp_model.IntVar]], pairs: np.ndarray,
                            k: int) -> None:
    """The forced pairs on the full model's ``W`` (C, F) rows: ``sum_f (W[a, f] AND W[b, f]) = k - 1``, exact."""
    for a, b in pairs:
        m.add(sum(shared_vars(m, W[int(a)], W[int(b)])) == k - 1)


def _scale(max_abs: float) -> float:
    return _Q_TARGET / max_abs if max_abs > 0 else 1.0


@dataclass
class FullModel:
    """The authors' formulation: s (F,), W (C, F), products y for penalised pairs."""
    model: cp_model.CpModel
    s: List[cp_model.IntVar]
    W: List[List[cp_model.IntVar]]
    Q: float
    slack: float


def build_full_model(problem: QPMProblem, uniqueness: str = "all") -> FullModel:
    """QPM eq. (objective) with all constraints (docs/METHOD.md, "The optimisation problem") as a CP-SAT model.

    ``uniqueness="all"``: for every class pair, ``sum_f (W_cf AND W_c'f) <= n_wc - 1`` (exact);
    ``"none"``: left out, to be added lazily with :meth:`add_nogood` as the authors do. CHiQPM's forced pairs of
    the problem (docs/METHOD.md, "CHiQPM: forced pairs") are exact constraints (the idealised condition is not
    modelled here: see :mod:`.forced`).
    """
    A, P, B = problem.A, problem.penalty, problem.B
    F, C = A.shape
    k, n = problem.n_per_class, problem.n_features
    pairs = np.argwhere(np.triu(P, 1) > 0)
    coef_a = problem.z_a_factor * A
    max_abs = max(float(np.abs(coef_a).max()), float(np.abs(B).max()),
                  float(P.max()) if P.size else 0.0)
    Q = _scale(max_abs)
    m = cp_model.CpModel()
    s = [m.new_bool_var(f"s{f}") for f in range(F)]
    W = [[m.new_bool_var(f"w{c}_{f}") for f in range(F)] for c in range(C)]
    m.add(sum(s) == n)
    for c in range(C):
        m.add(sum(W[c]) == k)
        for f in range(F):
            m.add_implication(W[c][f], s[f])
    terms = []
    for c in range(C):
        for f in range(F):
            q = int(round(coef_a[f, c] * Q))
            if q:
                terms.append(q * W[c][f])
    for f in range(F):
        q = int(round(B[f] * Q))
        if q:
            terms.append(q * s[f])
    for f, g in pairs:
        q = int(round(P[f, g] * Q))
        if q:
            y = m.new_bool_var(f"y{f}_{g}")
            m.add_bool_or([s[f].Not(), s[g].Not(), y])
            terms.append(-q * y)
    m.maximize(sum(terms))
    if uniqueness == "all":
        for c in range(C):
            for d in range(c + 1, C):
                m.add(sum(shared_vars(m, W[c], W[d], le_and=False)) <= k - 1)
    elif uniqueness != "none":
        raise ValueError(f"uniqueness must be 'all' or 'none', got {uniqueness!r}")
    if problem.pairs is not None:
        forced_pair_constraints(m, W, problem.pairs, k)
    slack = 0.5 / Q * (C * k + n + n * (n - 1) / 2)
    return FullModel(m, s, W, Q, slack)


def add_nogood(fm: FullModel, c: int, d: int, features: Sequence[int]) -> None:
    """Lazy uniqueness cut: classes c and d do not both use exactly ``features``."""
    fm.model.add_bool_or([fm.W[c][f].Not() for f in features] + [fm.W[d][f].Not() for f in features])


def hint_full_model(fm: FullModel, problem: QPMProblem, S: np.ndarray, W: np.ndarray) -> None:
    """AddHint of a complete solution (selection S, assignment W (C, |S|))."""
    fm.model.clear_hints()
    sel = np.zeros(problem.num_all_features, dtype=bool)
    sel[S] = True
    for f, v in enumerate(fm.s):
        fm.model.add_hint(v, bool(sel[f]))
    full = np.zeros((problem.num_classes, problem.num_all_features), dtype=bool)
    full[:, S] = W
    for c, row in enumerate(fm.W):
        for f, v in enumerate(row):
            fm.model.add_hint(v, bool(full[c, f]))


def read_full_solution(fm: FullModel, solver: cp_model.CpSolver) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted S, W (C, |S|)) from a solved full model."""
    S = np.array([f for f, v in enumerate(fm.s) if solver.boolean_value(v)], dtype=np.int64)
    W = np.array([[solver.boolean_value(row[f]) for f in S] for row in fm.W], dtype=bool)
    return S, W


def _class_options(a: np.ndarray, keep_desc: np.ndarray, free_good: np.ndarray, k: int,
                   slack_fixed: int, n_alternatives: int, max_free: int) -> Dict[Tuple[int, ...], float]:
    """Candidate n_wc-sets of one class in an LNS neighbourhood, with their summed A values.

    ``keep_desc``: kept features by decreasing ``a``; ``free_good``: free features beating the class's
    n_wc-th kept one. Whatever subset of ``free_good`` ends up selected (up to ``max_free`` of the
    best of them), the class's best set is that subset's top part completed by its top kept
    features: all of those are options. The ``n_alternatives`` best sets among its top
    ``n_wc + slack_fixed`` kept features give room to resolve collisions.
    """
    free_good = free_good[np.argsort(-a[free_good], kind="stable")][:max_free]
    out: Dict[Tuple[int, ...], float] = {}
    for j in range(0, min(k, free_good.size) + 1):
        if k - j > keep_desc.size:
            continue
        for comb in combinations(free_good.tolist(), j):
            t = tuple(sorted(comb + tuple(int(x) for x in keep_desc[: k - j])))
            out[t] = float(a[list(t)].sum())
    head = keep_desc[: k + slack_fixed]
    if head.size >= k:
        e = KBestSets(a[head], k)
        e.get(n_alternatives)
        for t, v in zip(e.sets, e.vals):
            out.setdefault(tuple(sorted(int(head[i]) for i in t)), v)
    return out


def solve_neighbourhood(problem: QPMProblem, S: np.ndarray, W: np.ndarray, out: np.ndarray,
                        pool: np.ndarray, sets_per_class: int, workers: int, seed: int,
                        det_time: float, wall_cap: float, slack_fixed: int = 2, max_free: int = 6
                        ) -> Tuple[Optional[np.ndarray], SatRun]:
    """LNS step: keep ``S \\ out`` selected, choose ``len(out)`` features from ``out ∪ pool``.

    Set-choice model: class c picks exactly one of its options (:func:`_class_options`: its best
    set for every choice of the free features, alternatives among kept features, its incumbent
    set); a set is usable only if its free features are chosen; every set is used by at most one
    class (uniqueness). Any solution is feasible for the
    full problem; the incumbent is hinted. Returns (new selection or None if unchanged, the
    :class:`SatRun`).
    """
    A, P, B = problem.A, problem.penalty, problem.B
    k = problem.n_per_class
    keep = np.setdiff1d(S, out)
    free = np.union1d(out, pool)
    C = problem.num_classes
    Vk = A[keep]
    order = np.argsort(-Vk, axis=0, kind="stable")
    kth = Vk[order[k - 1], np.arange(C)] if keep.size >= k else np.full(C, -np.inf)
    coef_a = problem.z_a_factor
    incumbent_sets = [tuple(S[np.flatnonzero(W[c])]) for c in range(C)]

    m = cp_model.CpModel()
    s = {int(h): m.new_bool_var(f"s{h}") for h in free}
    m.add(sum(s.values()) == out.size)
    by_set: Dict[Tuple[int, ...], List[cp_model.IntVar]] = {}
    lin: Dict[int, float] = {}
    max_abs = 0.0
    per_class = []
    for c in range(C):
        sets = _class_options(A[:, c], keep[order[:, c]], free[A[free, c] > kth[c]], k,
                              slack_fixed, sets_per_class, max_free)
        inc = incumbent_sets[c]
        sets.setdefault(inc, float(A[list(inc), c].sum()))
        per_class.append(sets)
        max_abs = max(max_abs, max(abs(v) for v in sets.values()) * coef_a)
    for h in free:
        lin[int(h)] = float(B[h] - P[h, keep].sum())
        max_abs = max(max_abs, abs(lin[int(h)]))
    fp = [(int(f), int(g)) for i, f in enumerate(free) for g in free[i + 1:] if P[f, g] > 0]
    if fp:
        max_abs = max(max_abs, max(P[f, g] for f, g in fp))
    Q = _scale(max_abs)
    terms = []
    hint_x = []
    for c, sets in enumerate(per_class):
        xs = []
        for t in sorted(sets):
            x = m.new_bool_var("")
            xs.append(x)
            for h in t:
                if h in s:
                    m.add_implication(x, s[h])
            by_set.setdefault(t, []).append(x)
            terms.append(int(round(coef_a * sets[t] * Q)) * x)
            hint_x.append((x, t == incumbent_sets[c]))
        m.add_exactly_one(xs)
    for xs in by_set.values():
        if len(xs) > 1:
            m.add_at_most_one(xs)
    for h, v in lin.items():
        terms.append(int(round(v * Q)) * s[h])
    in_s = set(int(x) for x in S)
    for f, g in fp:
        y = m.new_bool_var("")
        m.add_bool_or([s[f].Not(), s[g].Not(), y])
        terms.append(-int(round(P[f, g] * Q)) * y)
        m.add_hint(y, f in in_s and g in in_s)
    m.maximize(sum(terms))
    for h, v in s.items():
        m.add_hint(v, h in in_s)
    for x, val in hint_x:
        m.add_hint(x, val)
    run = run_sat(m, workers, seed, det_time, wall_cap)
    if not run.has_solution:
        return None, run
    chosen = np.array(sorted(h for h, v in s.items() if run.solver.boolean_value(v)), dtype=np.int64)
    new_S = np.sort(np.concatenate([keep, chosen]))
    if np.array_equal(new_S, np.sort(S)):
        return None, run
    return new_S, run

"""solve_qpm: heuristic start, exact CP-SAT on small instances, CP-SAT LNS on large ones.

Phases (spec: "The optimisation problem"; the LP bound is weak, so the work goes into solutions):
1. Starts: the tau-clique and a greedy selection, each improved by swap local search on the exact
   Z(S) (:mod:`.heuristic`); the best is the incumbent.
2. Small instances (C*F <= ``_FULL_MAX_W``): the full CP-SAT model with exact uniqueness, hinted
   with the incumbent; it may prove optimality.
3. Otherwise / remaining budget: large-neighbourhood search: free a few selected features and a
   pool of promising outside features, solve the set-choice model of
   :func:`.cpsat.solve_neighbourhood`, re-evaluate exactly in floats, accept improvements and
   polish them with local search.

Determinism: the phases consume a deterministic work budget of ``_DET_PER_SECOND * time_limit``
(CP-SAT deterministic time plus a size-proportional charge per LNS model), never the wall clock,
so the same inputs and seed give the same answer on a loaded or an idle machine. The wall clock is
only a safety cap at ``time_limit``; when it cuts a run short the log says so (then, and only then,
a result can depend on machine load).
"""
import math
import os
import sys
import time
from typing import Optional

import numpy as np
from ortools.sat.python import cp_model

from .cpsat import build_full_model, hint_full_model, read_full_solution, sat_parameters, \
    solve_neighbourhood
from .heuristic import _swap_deltas, evaluate_selection, greedy_selection, local_search
from .problem import QPMProblem
from .solution import QPMSolution, check_solution

__all__ = ["solve_qpm"]

_FULL_MAX_W = 4000          # C * F up to which the full exact model is solved
_FULL_MAX_PAIR_VARS = 150_000  # C (C-1) / 2 * F uniqueness auxiliaries up to which likewise
_DET_PER_SECOND = 0.1       # deterministic-time units of work per second of time_limit
_FULL_SHARE = 0.6           # share of the budget for the full model (small instances)
_BUILD_CHARGE = 2e-5        # deterministic units charged per LNS model variable (Python build time)
_MAX_WORKERS = 8


class _Log:
    def __init__(self, enabled: bool, t0: float):
        self.enabled, self.t0 = enabled, t0

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[solve_qpm {time.perf_counter() - self.t0:8.2f}s] {msg}", file=sys.stdout, flush=True)


def _default_workers(workers: Optional[int]) -> int:
    if workers is None:
        return max(1, min(os.cpu_count() or 1, _MAX_WORKERS))
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1 or None, got {workers}")
    return int(workers)


def solve_qpm(problem: QPMProblem, time_limit: float = 120.0, seed: int = 0,
              workers: Optional[int] = None, log: bool = False) -> QPMSolution:
    """Solve the QPM problem (spec: "The optimisation problem"); returns a checked QPMSolution.

    Raises ValueError if ``time_limit`` expires before any feasible solution exists.
    """
    if not isinstance(problem, QPMProblem):
        raise TypeError(f"problem must be a QPMProblem, got {type(problem).__name__}")
    if not (isinstance(time_limit, (int, float)) and math.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    t0 = time.perf_counter()
    deadline = t0 + float(time_limit)
    workers = _default_workers(workers)
    say = _Log(log, t0)
    rng = np.random.default_rng(seed)
    det_budget = _DET_PER_SECOND * float(time_limit)
    det_used = 0.0
    cut_by_wall = False
    say(f"F={problem.num_all_features} C={problem.num_classes} n_f*={problem.n_features} "
        f"n_wc={problem.n_per_class} tau={problem.tau:.6g} (tau procedure {problem.tau_time:.2f}s) "
        f"workers={workers}")

    starts = [("greedy", greedy_selection(problem))]
    if problem.clique is not None:
        starts.insert(0, ("tau-clique", problem.clique))
    if time.perf_counter() > deadline:
        raise ValueError(f"time_limit={time_limit}s expired before a feasible solution was found "
                         f"(the greedy start alone took longer); raise time_limit")
    best = None
    for name, S0 in starts:
        S, Z, W = local_search(problem, S0, deadline)
        say(f"start {name}: Z={Z:.6f} after local search")
        if best is None or Z > best[1] + 1e-12:
            best = (S, Z, W)
    S, Z, W = best
    bound = problem.upper_bound()
    status = "feasible"
    say(f"incumbent Z={Z:.6f} bound={bound:.6f}")

    C, F = problem.num_classes, problem.num_all_features
    full = C * F <= _FULL_MAX_W and C * (C - 1) // 2 * F <= _FULL_MAX_PAIR_VARS
    if full and time.perf_counter() < deadline:
        fm = build_full_model(problem, "all")
        hint_full_model(fm, problem, S, W)
        solver = cp_model.CpSolver()
        sat_parameters(solver, workers, seed, _FULL_SHARE * det_budget, deadline - time.perf_counter())
        st = solver.solve(fm.model)
        det_used += float(solver.response_proto.deterministic_time)
        if st in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            S2, _ = read_full_solution(fm, solver)
            S2, Z2, W2 = local_search(problem, S2, deadline)
            if Z2 > Z + 1e-12:
                S, Z, W = S2, Z2, W2
            bound = min(bound, solver.best_objective_bound / fm.Q + fm.slack)
            if st == cp_model.OPTIMAL:
                status = "optimal"
        if st == cp_model.UNKNOWN or solver.wall_time >= deadline - t0 - 1e-3:
            cut_by_wall = cut_by_wall or det_used < det_budget - 1e-3
        say(f"full CP-SAT model: {solver.status_name(st)} Z={Z:.6f} bound={bound:.6f}")

    rounds = 0
    stall = 0
    sizes = (2, 3, 4, 6, 8)
    out_max = problem.n_features
    while status != "optimal" and det_used < det_budget and F > problem.n_features:
        if time.perf_counter() >= deadline:
            cut_by_wall = True
            break
        d = min(sizes[rounds % len(sizes)] + stall // (2 * len(sizes)), out_max)
        in_s = np.zeros(F, dtype=bool)
        in_s[S] = True
        score = _swap_deltas(problem, S, in_s).max(axis=0)
        outside = np.flatnonzero(~in_s)
        g = min(outside.size, 6 * d)
        ranked = outside[np.lexsort((outside, -score[outside]))]
        top = ranked[: min(ranked.size, 3 * g)]
        pool = np.sort(np.concatenate([top[: g // 2], rng.choice(top[g // 2:], size=min(g - g // 2,
                                       top.size - g // 2), replace=False)])).astype(np.int64)
        out = np.sort(rng.choice(S, size=d, replace=False))
        det_round = min(max(0.5, 0.02 * time_limit), det_budget - det_used)
        new_S, spent = solve_neighbourhood(problem, S, W, out, pool, sets_per_class=12,
                                           workers=workers, seed=seed + rounds, det_time=det_round,
                                           wall_cap=max(1e-3, deadline - time.perf_counter()))
        det_used += spent + _BUILD_CHARGE * C * 12
        rounds += 1
        improved = False
        if new_S is not None:
            Z2, W2 = evaluate_selection(problem, new_S)
            if Z2 > Z + 1e-9:
                S2, Z2, W2 = local_search(problem, new_S, deadline)
                S, Z, W = S2, Z2, W2
                improved = True
                say(f"LNS round {rounds} (free {d} + pool {pool.size}): Z={Z:.6f} bound={bound:.6f}")
        stall = 0 if improved else stall + 1
    if cut_by_wall:
        say("wall-clock cap reached before the deterministic budget: this result may depend on load")
    wall = time.perf_counter() - t0
    sol = QPMSolution(selected=S, assignment=W, objective=float(Z), bound=float(bound), status=status,
                      wall_time=wall, input_hash=problem.input_hash(),
                      settings={"time_limit": float(time_limit), "seed": int(seed), "workers": workers,
                                "tau": float(problem.tau), "tau_time": float(problem.tau_time),
                                "n_features": problem.n_features, "n_per_class": problem.n_per_class,
                                "lns_rounds": rounds, "deterministic_time": det_used,
                                "cut_by_wall_clock": cut_by_wall})
    check_solution(problem, sol)
    say(f"done: {status} Z={Z:.6f} bound={bound:.6f} ({rounds} LNS rounds, {wall:.1f}s)")
    return sol

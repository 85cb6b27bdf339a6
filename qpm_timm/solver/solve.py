"""solve_qpm: heuristic start, exact CP-SAT on small instances, CP-SAT LNS on large ones.

Phases (spec: "The optimisation problem"; the LP bound is weak, so the work goes into solutions):
1. Starts: the tau-clique and a greedy selection, each improved by swap local search on the exact
   Z(S) (:mod:`.heuristic`); the best is the incumbent.
2. Small instances (C*F <= ``_FULL_MAX_W``): the full CP-SAT model with exact uniqueness, hinted
   with the incumbent; it may prove optimality.
3. Otherwise / remaining budget, one round in four: (a) CP-SAT large-neighbourhood search: free
   2-3 selected features and a pool of promising outside features (by insertion gain), solve the
   set-choice model of :func:`.cpsat.solve_neighbourhood` (these neighbourhoods are usually
   proven optimal in well under a second; larger ones stalled without improving in our tests);
   otherwise (b) an iterated-local-search kick: swap 2-5 random selected features for random
   promising ones (on the synthetic CUB-scale instances these kicks found the improvements). Either result is descended
   with local search, re-evaluated exactly in floats and kept only if Z improves.

Determinism: the full model gets ``_FULL_DET_PER_SECOND * time_limit`` of CP-SAT deterministic
time and the loop a work budget of ``_LOOP_DET_PER_SECOND * time_limit`` units
(CP-SAT deterministic time plus size-proportional charges for model building and local search),
never the wall clock,
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
from .heuristic import best_start, insertion_scores, local_search
from .problem import QPMProblem
from .solution import QPMSolution, check_solution

__all__ = ["solve_qpm"]

_FULL_MAX_W = 4000          # C * F up to which the full exact model is solved
_FULL_MAX_PAIR_VARS = 150_000  # C (C-1) / 2 * F uniqueness auxiliaries up to which likewise
_FULL_DET_PER_SECOND = 0.12  # full model: CP-SAT deterministic time per second of time_limit
_LOOP_DET_PER_SECOND = 0.3  # LNS/kick loop: deterministic units per second of time_limit
_BUILD_CHARGE = 2e-5        # deterministic units per class and pool feature of an LNS model (build)
_LS_CHARGE = 2e-10          # deterministic units per local-search scan and F * C * n_features
_LNS_DET = 0.3              # CP-SAT deterministic time per LNS neighbourhood
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


def _ranked_outside(problem: QPMProblem, S: np.ndarray) -> np.ndarray:
    """The features outside S by decreasing insertion gain (index order on ties)."""
    score = insertion_scores(problem, S)
    outside = np.flatnonzero(np.isfinite(score))
    return outside[np.lexsort((outside, -score[outside]))]


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
    det_budget = _LOOP_DET_PER_SECOND * float(time_limit)
    det_used = 0.0
    cut_by_wall = False
    say(f"F={problem.num_all_features} C={problem.num_classes} n_f*={problem.n_features} "
        f"n_wc={problem.n_per_class} tau={problem.tau:.6g} (tau procedure {problem.tau_time:.2f}s) "
        f"workers={workers}")

    S, Z, W = best_start(problem, deadline, say)
    bound = problem.upper_bound()
    status = "feasible"
    say(f"incumbent Z={Z:.6f} bound={bound:.6f}")

    C, F = problem.num_classes, problem.num_all_features
    full = C * F <= _FULL_MAX_W and C * (C - 1) // 2 * F <= _FULL_MAX_PAIR_VARS
    if full and time.perf_counter() < deadline:
        fm = build_full_model(problem, "all")
        hint_full_model(fm, problem, S, W)
        solver = cp_model.CpSolver()
        cap = deadline - time.perf_counter()
        sat_parameters(solver, workers, seed, _FULL_DET_PER_SECOND * time_limit, cap)
        st = solver.solve(fm.model)
        if st in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            S2, _ = read_full_solution(fm, solver)
            S2, Z2, W2, _ = local_search(problem, S2, deadline)
            if Z2 > Z + 1e-12:
                S, Z, W = S2, Z2, W2
            bound = min(bound, solver.best_objective_bound / fm.Q + fm.slack)
            if st == cp_model.OPTIMAL:
                status = "optimal"
        cut_by_wall = solver.wall_time >= 0.999 * cap
        say(f"full CP-SAT model: {solver.status_name(st)} Z={Z:.6f} bound={bound:.6f}")

    rounds = 0
    ranked = _ranked_outside(problem, S)
    while status != "optimal" and det_used < det_budget and F > problem.n_features:
        if time.perf_counter() >= deadline:
            cut_by_wall = True
            break
        kind = "LNS" if rounds % 4 == 0 else "kick"
        d = min(2 + (rounds // 4) % 2 if kind == "LNS" else 2 + rounds % 4, problem.n_features,
                ranked.size)
        out = np.sort(rng.choice(S, size=d, replace=False))
        if kind == "LNS":
            g = min(ranked.size, 8 * d)
            head, tail = ranked[: 4 * d], ranked[4 * d: 4 * d + 12 * d]
            extra = rng.choice(tail, size=min(g - head.size, tail.size), replace=False)
            pool = np.sort(np.concatenate([head, extra])).astype(np.int64)
            new_S, spent = solve_neighbourhood(
                problem, S, W, out, pool, sets_per_class=8, workers=workers, seed=seed + rounds,
                det_time=min(_LNS_DET, det_budget - det_used),
                wall_cap=max(1e-3, deadline - time.perf_counter()))
            det_used += spent + _BUILD_CHARGE * C * pool.size
        else:  # iterated local search: swap d random features for d promising ones, then descend
            pick = rng.choice(ranked[: max(d, 2 * problem.n_features)], size=d, replace=False)
            new_S = np.sort(np.concatenate([np.setdiff1d(S, out), pick]))
        rounds += 1
        if new_S is None:
            continue
        S2, Z2, W2, scans = local_search(problem, new_S, deadline)
        det_used += _LS_CHARGE * scans * F * C * problem.n_features
        if Z2 > Z + 1e-9:
            S, Z, W = S2, Z2, W2
            ranked = _ranked_outside(problem, S)
            say(f"{kind} round {rounds} ({d} out): Z={Z:.6f} bound={bound:.6f}")
    if cut_by_wall:
        say("wall-clock cap reached before the deterministic budget: this result may depend on load")
    wall = time.perf_counter() - t0
    sol = QPMSolution(selected=S, assignment=W, objective=float(Z), bound=float(bound), status=status,
                      wall_time=wall, input_hash=problem.input_hash(),
                      settings={"time_limit": float(time_limit), "seed": int(seed), "workers": workers,
                                "tau": float(problem.tau), "tau_time": float(problem.tau_time),
                                "n_features": problem.n_features, "n_per_class": problem.n_per_class,
                                "search_rounds": rounds, "deterministic_time": det_used,
                                "cut_by_wall_clock": cut_by_wall})
    check_solution(problem, sol)
    say(f"done: {status} Z={Z:.6f} bound={bound:.6f} ({rounds} LNS/kick rounds, {wall:.1f}s)")
    return sol

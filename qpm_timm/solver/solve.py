"""solve_qpm: heuristic start, exact CP-SAT on small instances, CP-SAT LNS on large ones, LP bound.

Phases (docs/METHOD.md, "The optimisation problem"):
1. Starts: the tau-clique and a greedy selection, each improved by swap local search on the exact
   Z(S) (:mod:`.heuristic`); the best is the incumbent. Bounded by work: local search stops at a
   local optimum.
2. Small instances (C*F <= ``_FULL_MAX_W``): the full CP-SAT model with exact uniqueness, hinted
   with the incumbent, given ``_FULL_SHARE`` of the effort; it may prove optimality, and its bound
   can be tighter than the LP bound.
3. The rest of the effort, one round in four: (a) CP-SAT large-neighbourhood search: free
   2-3 selected features and a pool of promising outside features (by insertion gain), solve the
   set-choice model of :func:`.cpsat.solve_neighbourhood` (these neighbourhoods are usually
   proven optimal in well under a second; larger ones stalled without improving in our tests);
   otherwise (b) an iterated-local-search kick: swap 2-5 random selected features for random
   promising ones (on the synthetic CUB-scale instances these kicks found the improvements). Either
   result is descended with local search, re-evaluated exactly in floats and kept only if Z improves.
4. CHiQPM's forced pairs (docs/METHOD.md, "CHiQPM: forced pairs"), when the problem has them: phases 1-3
   search the selection without them on ``1 - _PAIR_SHARE`` of the effort (the full model of phase 2 is
   left out); then, for the selection found, the best assignment in which every forced pair shares exactly
   ``n_wc - 1`` features (:func:`.forced.assign_forced`); on small instances the full model with the pairs,
   hinted with it; with ``idealize``, CHiQPM's idealising step for that selection
   (:func:`.forced.assign_idealized`). An infeasible request raises :class:`.forced.PairsInfeasible`.
5. The bound: :func:`.bound.lp_bound` (the LP relaxation of the coupling ``W <= s``, valid by the
   proof in :mod:`.bound`), or the full model's CP-SAT bound where that is lower. The LP bound ignores
   forced pairs; it bounds their problem too (a restriction), and ``settings["bound_problem"]`` says
   which problem a reported bound was computed for.

Effort, not time, decides the answer. ``effort`` is a budget in deterministic units: CP-SAT's
deterministic time (an operation count; one unit is roughly one second of one core of this
project's CPU machine; the full model's is charged ``_FULL_COST`` times) plus charges for our own
work of about the same cost per unit (local-search scans: a fixed part plus a part proportional to
F * C * n_f*; building an LNS model). Every loop is
bounded by this work count or by a local optimum, never by the clock, and numpy's BLAS runs on
one thread, so the same inputs, seed, effort and workers give the same answer on an idle or a
loaded machine (2-4 workers give the same answer, see :mod:`.cpsat`). ``time_limit`` is only a
safety cap: when the wall clock reaches it before the effort is spent the search stops, the result
says ``cut_by_wall_clock=True`` and the log warns (then, and only then, the result can depend on
load). The default effort was measured to finish well within the default cap on this project's
loaded 2-core machine (benchmarks/RESULTS.md).
"""
import math
import numbers
import os
import sys
import time
from typing import Optional

import numpy as np
from threadpoolctl import threadpool_limits

from .bound import lp_bound
from .certify import certify as run_certify
from .cpsat import build_full_model, hint_full_model, read_full_solution, run_sat, solve_neighbourhood
from .forced import assign_forced, assign_idealized
from .heuristic import best_start, insertion_scores, local_search
from .problem import QPMProblem
from .solution import QPMSolution, check_solution

__all__ = ["solve_qpm", "DEFAULT_EFFORT", "DEFAULT_TIME_LIMIT"]

DEFAULT_EFFORT = 10.0        # deterministic units (see the module docstring; calibration in benchmarks/RESULTS.md)
DEFAULT_TIME_LIMIT = 120.0   # seconds, the wall-clock safety cap
_FULL_MAX_W = 4000           # C * F up to which the full exact model is solved
_FULL_MAX_PAIR_VARS = 150_000  # C (C-1) / 2 * F uniqueness auxiliaries up to which likewise
_FULL_SHARE = 0.3            # share of the effort for the full model ...
_FULL_COST = 4.0             # ... whose CP-SAT deterministic time is charged 4x: it took 3-6x the wall time per
                             # unit of the LNS loop's on the 96 x 24 instance of benchmarks/solver_effort.py
_CALL_CHARGE = 0.05          # units per LNS model (CP-SAT's start-up, outside its deterministic time) ...
_BUILD_CHARGE = 2e-5         # ... plus units per class and pool feature (building the model)
_SCAN_CHARGE = 1e-3          # units per local-search scan (fixed part) ...
_SCAN_CHARGE_FCN = 4e-10     # ... plus units per scan and F * C * n_features
_LNS_DET = 0.3               # CP-SAT deterministic time per LNS neighbourhood
_MAX_WORKERS = 4             # = the interleaved batch size of .cpsat: more threads would idle
_PAIR_SHARE = 0.3            # share of the effort for the forced-pairs phase (4.) ...
_PAIR_MIN = 0.1              # ... and at least this share, whatever the search before it overshot


class _Log:
    def __init__(self, enabled: bool, t0: float):
        self.enabled, self.t0 = enabled, t0

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[solve_qpm {time.perf_counter() - self.t0:8.2f}s] {msg}", file=sys.stdout, flush=True)


class _Budget:
    """The effort (deterministic units spent so far) and the wall-clock safety cap."""

    def __init__(self, effort: float, time_limit: float, t0: float):
        self.effort, self.used, self.time_limit, self.deadline = effort, 0.0, time_limit, t0 + time_limit
        self.cut_by_wall_clock = False

    @property
    def left(self) -> float:
        return self.effort - self.used

    def wall_left(self) -> float:
        return max(1e-3, self.deadline - time.perf_counter())

    def late(self) -> bool:
        """True (and remembered as a cut) once the wall clock has reached the cap."""
        if time.perf_counter() >= self.deadline:
            self.cut_by_wall_clock = True
        return self.cut_by_wall_clock


def _positive_finite(name: str, value, hint: str) -> float:
    """``value`` as a float, or ValueError naming what is wrong with it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}; {hint}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}; {hint}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}; {hint}")
    return float(value)


def _default_workers(workers: Optional[int]) -> int:
    if workers is None:
        return max(1, min(os.cpu_count() or 1, _MAX_WORKERS))
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1 or None, got {workers}")
    return int(workers)


def _scan_charge(problem: QPMProblem, scans: int) -> float:
    """Deterministic units for ``scans`` local-search scans (calibrated against CP-SAT's units)."""
    fcn = problem.num_all_features * problem.num_classes * problem.n_features
    return scans * (_SCAN_CHARGE + _SCAN_CHARGE_FCN * fcn)


def _ranked_outside(problem: QPMProblem, S: np.ndarray) -> np.ndarray:
    """The features outside S by decreasing insertion gain (index order on ties)."""
    score = insertion_scores(problem, S)
    outside = np.flatnonzero(np.isfinite(score))
    return outside[np.lexsort((outside, -score[outside]))]


def solve_qpm(problem: QPMProblem, *, effort: float = DEFAULT_EFFORT, time_limit: float = DEFAULT_TIME_LIMIT,
              seed: int = 0, workers: Optional[int] = None, log: bool = False,
              start: Optional[np.ndarray] = None, certify: bool = False, certify_effort: float = 100.0,
              certify_gap: float = 0.01, certify_time_limit: float = 600.0,
              certify_state: Optional[str] = None) -> QPMSolution:
    """Solve the QPM problem (docs/METHOD.md, "The optimisation problem"); returns a checked QPMSolution.

    ``effort``: deterministic work budget of the search (phases 2-3 of the module docstring; the
    start and the bound are fixed work). ``time_limit``: wall-clock safety cap in seconds.
    ``workers``: CP-SAT threads (None: the CPU count, at most 4). ``start``: one more starting selection
    (``n_features`` indices, e.g. the solution an edit changes), tried first in phase 1. Raises ValueError for a
    non-positive or non-finite effort or time limit, and if the time limit expires before any
    feasible solution exists; :class:`~qpm_timm.solver.forced.PairsInfeasible` (a ValueError) when the
    problem's forced pairs cannot be satisfied or no assignment satisfying them is found in the effort.

    ``certify``: afterwards, prove the solution within ``certify_gap`` by the branch and bound of
    :mod:`.certify` on ``certify_effort`` units (``certify_time_limit`` seconds cap it; ``certify_state`` makes it
    resumable); the solution's bound becomes the lower of the two, ``settings["certify"]`` says what it proved.
    Off (the default), the solve is exactly the one above.
    """
    if not isinstance(problem, QPMProblem):
        raise TypeError(f"problem must be a QPMProblem, got {type(problem).__name__}")
    effort = _positive_finite("effort", effort, f"it counts deterministic work units (default {DEFAULT_EFFORT})")
    time_limit = _positive_finite("time_limit", time_limit, "it is the wall-clock safety cap in seconds")
    t0 = time.perf_counter()
    workers = _default_workers(workers)
    with threadpool_limits(limits=1, user_api="blas"):
        sol = _solve(problem, _Budget(effort, time_limit, t0), seed, workers, _Log(log, t0), t0, start)
        if certify:
            sol = _certified(problem, sol, certify_effort, certify_gap, certify_time_limit, certify_state, log, t0)
    return sol


def _certified(problem: QPMProblem, sol: QPMSolution, effort: float, gap: float, time_limit: float,
               state: Optional[str], log: bool, t0: float) -> QPMSolution:
    """``sol`` with the bound (and possibly a better incumbent) of :func:`.certify.certify`."""
    res = run_certify(problem, sol.selected, sol.assignment, target_gap=gap, effort=effort, time_limit=time_limit,
                      state_path=state, progress=log, bound=sol.bound)
    settings = dict(sol.settings, certify=dict(
        bound=res.bound, root_bound=res.root_bound, gap=res.gap, proven=res.proven, target_gap=gap,
        nodes=res.nodes, open_nodes=res.open_nodes, effort=res.effort, effort_used=res.effort_used,
        cut_by_wall_clock=res.cut_by_wall_clock))
    if problem.pairs is not None and not problem.idealize and res.bound < (sol.bound or math.inf):
        settings["bound_problem"] = "with the forced pairs"
    bound = min(res.bound, sol.bound if sol.bound is not None else math.inf)
    status = "optimal" if bound <= res.objective + 1e-9 * max(1.0, abs(res.objective)) else sol.status
    out = QPMSolution(selected=res.selected, assignment=res.assignment, objective=float(res.objective),
                      bound=float(bound), status=status, wall_time=time.perf_counter() - t0,
                      input_hash=sol.input_hash, settings=settings, effort=sol.effort, effort_used=sol.effort_used,
                      time_limit=sol.time_limit, cut_by_wall_clock=sol.cut_by_wall_clock or res.cut_by_wall_clock)
    check_solution(problem, out)
    return out


def _solve(problem: QPMProblem, budget: _Budget, seed: int, workers: int, say: _Log, t0: float,
           start: Optional[np.ndarray] = None) -> QPMSolution:
    rng = np.random.default_rng(seed)
    forced = problem.pairs is not None
    say(f"F={problem.num_all_features} C={problem.num_classes} n_f*={problem.n_features} "
        f"n_wc={problem.n_per_class} tau={problem.tau:.6g} (tau procedure {problem.tau_time:.2f}s) "
        f"workers={workers} effort={budget.effort:g} time limit={budget.time_limit:g}s"
        + (f" forced pairs={len(problem.pairs)}{' (idealised)' if problem.idealize else ''}" if forced else ""))

    S, Z, W = best_start(problem, budget.deadline, say, start)
    budget.late()
    status = "feasible"
    sat_bound = math.inf
    say(f"incumbent Z={Z:.6f}")

    C, F = problem.num_classes, problem.num_all_features
    full = C * F <= _FULL_MAX_W and C * (C - 1) // 2 * F <= _FULL_MAX_PAIR_VARS
    if full and not forced and not budget.late():
        S, Z, W, optimal, sat_bound = _full_model(problem, S, Z, W, budget, workers, seed,
                                                  _FULL_SHARE * budget.effort / _FULL_COST, say, descend=True)
        status = "optimal" if optimal else status

    search_effort = budget.effort * (1 - _PAIR_SHARE) if forced else budget.effort
    rounds = 0
    ranked = _ranked_outside(problem, S)
    while (status != "optimal" and budget.used < search_effort and F > problem.n_features
           and not budget.late()):
        kind = "LNS" if rounds % 4 == 0 else "kick"
        d = min(2 + (rounds // 4) % 2 if kind == "LNS" else 2 + rounds % 4, problem.n_features,
                ranked.size)
        out = np.sort(rng.choice(S, size=d, replace=False))
        if kind == "LNS":
            g = min(ranked.size, 8 * d)
            head, tail = ranked[: 4 * d], ranked[4 * d: 4 * d + 12 * d]
            extra = rng.choice(tail, size=min(g - head.size, tail.size), replace=False)
            pool = np.sort(np.concatenate([head, extra])).astype(np.int64)
            new_S, run = solve_neighbourhood(
                problem, S, W, out, pool, sets_per_class=8, workers=workers, seed=seed + rounds,
                det_time=min(_LNS_DET, search_effort - budget.used), wall_cap=budget.wall_left())
            budget.used += run.spent + _CALL_CHARGE + _BUILD_CHARGE * C * pool.size
            budget.cut_by_wall_clock |= run.cut_by_wall_clock
        else:  # iterated local search: swap d random features for d promising ones, then descend
            pick = rng.choice(ranked[: max(d, 2 * problem.n_features)], size=d, replace=False)
            new_S = np.sort(np.concatenate([np.setdiff1d(S, out), pick]))
        rounds += 1
        if new_S is None:
            continue
        S2, Z2, W2, scans = local_search(problem, new_S, budget.deadline)
        budget.used += _scan_charge(problem, scans)
        budget.late()  # a local search that reached the deadline may have stopped early
        if Z2 > Z + 1e-9:
            S, Z, W = S2, Z2, W2
            ranked = _ranked_outside(problem, S)
            say(f"{kind} round {rounds} ({d} out): Z={Z:.6f} (effort used {budget.used:.3g})")
    pair_settings = {}
    if forced:
        z_free = Z
        S, Z, W, status, sat_bound = _forced_phase(problem, S, W, budget, seed, workers, say, full)
        pair_settings = dict(pairs=[[int(a), int(b)] for a, b in problem.pairs], idealize=problem.idealize,
                     z_without_pairs=float(z_free))
    if budget.cut_by_wall_clock:
        say(f"WARNING: the time limit cut the search after {budget.used:.3g} of {budget.effort:g} effort units: "
            f"this result may depend on machine load (raise the time limit or lower the effort)")
    t_bound = time.perf_counter()
    lp = lp_bound(problem)[0]
    bound = min(lp, sat_bound)
    bound_time = time.perf_counter() - t_bound
    if forced:
        pair_settings["bound_problem"] = "with the forced pairs" if sat_bound < lp else \
            "without the forced pairs (valid for them, since forcing pairs only restricts the problem)"
    if bound <= Z + 1e-9 * max(1.0, abs(Z)):
        status = "optimal"
    sol = QPMSolution(selected=S, assignment=W, objective=float(Z), bound=float(bound), status=status,
                      wall_time=time.perf_counter() - t0, input_hash=problem.input_hash(),
                      settings={"seed": int(seed), "workers": workers,
                                "tau": float(problem.tau), "tau_time": float(problem.tau_time),
                                "n_features": problem.n_features, "n_per_class": problem.n_per_class,
                                "search_rounds": rounds, "bound_time": bound_time, **pair_settings},
                      effort=budget.effort, effort_used=budget.used, time_limit=budget.time_limit,
                      cut_by_wall_clock=budget.cut_by_wall_clock)
    check_solution(problem, sol)
    say(f"done: {sol.summary()} ({rounds} LNS/kick rounds, bound {bound_time:.1f}s)")
    return sol


def _full_model(problem: QPMProblem, S: np.ndarray, Z: float, W: np.ndarray, budget: _Budget, workers: int,
                seed: int, det_time: float, say: _Log, descend: bool):
    """Phase 2 (or 4 with forced pairs): the full CP-SAT model, hinted with (S, W), on ``det_time``; its selection
    descended by local search (``descend``; not with forced pairs, which the local search does not keep). Returns
    (S, Z, W, proven optimal, CP-SAT bound or inf)."""
    fm = build_full_model(problem, "all")
    hint_full_model(fm, problem, S, W)
    run = run_sat(fm.model, workers, seed, det_time, budget.wall_left())
    budget.used += _FULL_COST * run.spent
    budget.cut_by_wall_clock |= run.cut_by_wall_clock
    sat_bound = math.inf
    if run.has_solution:
        S2, W2 = read_full_solution(fm, run.solver)
        if descend:
            S2, Z2, W2, _ = local_search(problem, S2, budget.deadline)
            budget.late()
        else:
            Z2 = problem.objective(S2, W2)
        if Z2 > Z + 1e-12:
            S, Z, W = S2, Z2, W2
        sat_bound = run.solver.best_objective_bound / fm.Q + fm.slack
    say(f"full CP-SAT model{' with the forced pairs' if problem.pairs is not None else ''}: "
        f"{run.solver.status_name(run.status)} Z={Z:.6f} CP-SAT bound={sat_bound:.6f} (effort used {budget.used:.3g})")
    return S, Z, W, run.optimal, sat_bound


def _forced_phase(problem: QPMProblem, S: np.ndarray, W: np.ndarray, budget: _Budget, seed: int, workers: int,
                  say: _Log, full: bool):
    """Phase 4 of the module docstring; returns (S, Z, W, status, CP-SAT bound of the forced problem or inf)."""
    steps = 1 + int(full) + int(problem.idealize)
    share = max(budget.left, _PAIR_MIN * budget.effort) / steps

    def charge(spent: float, cut: bool) -> None:
        budget.used += spent
        budget.cut_by_wall_clock |= cut

    W, spent, _, cut = assign_forced(problem, S, W, share, workers, seed, budget.wall_left)
    charge(spent, cut)
    Z = problem.objective(S, W)
    status, sat_bound = "feasible", math.inf
    say(f"forced pairs: Z={Z:.6f} for the searched selection (effort used {budget.used:.3g})")
    if full and not budget.late():
        S, Z, W, optimal, sat_bound = _full_model(problem, S, Z, W, budget, workers, seed, share / _FULL_COST, say,
                                                  descend=False)
        status = "optimal" if optimal else status
    if problem.idealize:
        W2, spent, _, cut = assign_idealized(problem, S, W, share, workers, seed, budget.wall_left)
        charge(spent, cut)
        Z2 = problem.objective(S, W2)
        if Z2 > Z + 1e-12:
            W, Z = W2, Z2
        status, sat_bound = "feasible", math.inf  # the forced problem's bound does not bound the idealised one
        say(f"idealised: Z={Z:.6f} (effort used {budget.used:.3g})")
    return S, Z, W, status, sat_bound

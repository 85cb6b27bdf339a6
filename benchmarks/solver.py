"""Benchmark of the QPM solver against the authors' formulation in CP-SAT, HiGHS and Gurobi.

Prints one table: per instance size and method the objective Z (float units, recomputed from the
data; "-" when the method ended without a solution satisfying every constraint), its proven upper
bound, the gap that bound certifies for the best objective found (``bound / best - 1``), the wall
time, and the ratio to the best objective any method found on that instance.

    python benchmarks/solver.py --sizes small,cub,imagenet --time-scale 1.0 --workers 2

Instances come from :func:`qpm_timm.solver.synthetic.synthetic_statistics` (seeded, structured
like a trained CNN's statistics). Time limits (scaled by --time-scale): small 30 s, CUB 120 s,
ImageNet 600 s: the baselines' budget and our safety cap; ours runs at ``--effort`` (default: the
solver's default), and at the small and CUB sizes also at 10x the effort (and cap) as a reference
for "best known".
Methods:
  ours            solve_qpm (tau-clique + greedy starts, swap local search, CP-SAT LNS / kicks; LP bound)
  ours-10x        the same with 10x the effort (small and CUB, for the best-known reference)
  cheap-bound     no solution: the bound solve_qpm reported before the LP bound (every class its top
                  n_wc over all features, top n_f* of B, Z_R <= 0), for comparison
  greedy          greedy construction + exact assignment for its selection, no search
  greedy+swap     the best start after swap local search (phase 1 of ours)
  cpsat-authors   the authors' formulation (s, W, products y) built directly in CP-SAT, no hint, no
                  heuristics; uniqueness added lazily as no-good cuts on colliding class pairs and
                  re-solved (the authors' lazy scheme), until the time limit
  highs           the same linearised formulation (y >= s_f + s_g - 1 for penalised pairs) as a MIP
                  in HiGHS, uniqueness lazily as no-good rows sum_{f in T} (W_cf + W_c'f) <= 2 n_wc - 1
  gurobi          gurobipy on the same MIP where its free size-limited licence allows (<= 2000
                  variables and constraints: the "tiny" size)
"""
import argparse
import math
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qpm_timm.solver import DEFAULT_EFFORT, QPMProblem, check_solution, solve_qpm  # noqa: E402
from qpm_timm.solver.cpsat import (
    add_nogood,
    build_full_model,
    hint_full_model,
    read_full_solution,  # noqa: E402
    sat_parameters,
)
from qpm_timm.solver.heuristic import best_start, evaluate_selection, greedy_selection  # noqa: E402
from qpm_timm.solver.synthetic import synthetic_statistics  # noqa: E402

SIZES = {  # name: (F, C, n_features, n_per_class, images per class, time limit s)
    "tiny": (24, 8, 6, 2, 30, 10.0),
    "small": (64, 20, 8, 3, 30, 30.0),
    "cub": (2048, 200, 50, 5, 30, 120.0),
    "imagenet": (2048, 1000, 50, 5, 10, 600.0),
}

Row = Dict[str, object]


def _collisions(W: np.ndarray) -> List[Tuple[int, int]]:
    """Class pairs with identical feature sets."""
    groups: Dict[bytes, List[int]] = {}
    for c, row in enumerate(W):
        groups.setdefault(row.tobytes(), []).append(c)
    return [(g[0], d) for g in groups.values() if len(g) > 1 for d in g[1:]]


def run_ours(p: QPMProblem, effort: float, T: float, workers: int) -> Row:
    sol = solve_qpm(p, effort=effort, time_limit=T, seed=0, workers=workers)
    check_solution(p, sol)
    cut = ", CUT BY THE WALL CLOCK" if sol.cut_by_wall_clock else ""
    return dict(objective=sol.objective, bound=sol.bound, time=sol.wall_time + p.tau_time,
                note=f"{sol.status}, effort {sol.effort_used:.1f}/{effort:g}{cut}, tau {p.tau_time:.1f}s "
                     f"and bound {sol.settings['bound_time']:.1f}s incl.")


def run_cheap_bound(p: QPMProblem) -> Row:
    t0 = time.perf_counter()
    bound = p.upper_bound()
    return dict(objective=None, bound=bound, time=time.perf_counter() - t0, note="previous bound, no solution")


def run_greedy(p: QPMProblem) -> Row:
    t0 = time.perf_counter()
    S = greedy_selection(p)
    Z, W = evaluate_selection(p, S)
    return dict(objective=Z, bound=None, time=time.perf_counter() - t0, note="")


def run_greedy_swap(p: QPMProblem) -> Row:
    t0 = time.perf_counter()
    _, Z, _ = best_start(p)
    return dict(objective=Z, bound=None, time=time.perf_counter() - t0 + p.tau_time,
                note="both starts")


def run_cpsat_authors(p: QPMProblem, T: float, workers: int) -> Row:
    t0 = time.perf_counter()
    fm = build_full_model(p, "none")
    build = time.perf_counter() - t0
    best_z, bound, rounds, cuts, hint, last = None, None, 0, 0, None, ""
    while time.perf_counter() - t0 < T:
        if hint is not None:
            hint_full_model(fm, p, *hint)  # the authors warm-start each lazy round
        solver = cp_model_solver(workers, T - (time.perf_counter() - t0))
        st = solver.solve(fm.model)
        rounds += 1
        if solver.status_name(st) not in ("OPTIMAL", "FEASIBLE"):
            break
        bound = solver.best_objective_bound / fm.Q + fm.slack  # relaxation bound: valid
        S, W = read_full_solution(fm, solver)
        pairs = _collisions(W)
        if not pairs:  # every constraint holds: done (optimal or out of time)
            best_z = p.objective(S, W)
            break
        last = f"; last round Z={p.objective(S, W):.2f} with {len(pairs)} colliding pairs"
        for c, d in pairs:
            add_nogood(fm, c, d, S[np.flatnonzero(W[c])].tolist())
            cuts += 1
        hint = (S, W)
    return dict(objective=best_z, bound=bound, time=time.perf_counter() - t0,
                note=f"build {build:.0f}s, {rounds} rounds, {cuts} lazy cuts" + ("" if best_z is not None else last))


def cp_model_solver(workers: int, remaining: float):
    from ortools.sat.python import cp_model
    solver = cp_model.CpSolver()
    # The baseline gets the plain wall-clock limit (no deterministic budget) and all workers.
    sat_parameters(solver, workers, 0, 1e9, max(1e-3, remaining))
    solver.parameters.interleave_search = False
    return solver


def _mip_arrays(p: QPMProblem):
    """Linearised authors' formulation: columns s (F), W (C*F), y (pairs); rows as COO triplets."""
    F, C = p.A.shape
    n, k = p.n_features, p.n_per_class
    pairs = np.argwhere(np.triu(p.penalty, 1) > 0)
    P = len(pairs)
    n_col = F + C * F + P
    cost = np.concatenate([p.B, (p.z_a_factor * p.A.T).ravel(), -p.penalty[pairs[:, 0], pairs[:, 1]]])
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0
    rows.append(np.zeros(F, int))
    cols.append(np.arange(F))
    vals.append(np.ones(F))
    lo.append([n])
    hi.append([n])
    r += 1
    w = F + np.arange(C * F)
    rows.append(np.repeat(r + np.arange(C), F))
    cols.append(w)
    vals.append(np.ones(C * F))
    lo.append(np.full(C, k))
    hi.append(np.full(C, k))
    r += C
    rr = r + np.arange(C * F)  # W_cf - s_f <= 0
    rows += [rr, rr]
    cols += [w, np.tile(np.arange(F), C)]
    vals += [np.ones(C * F), -np.ones(C * F)]
    lo.append(np.full(C * F, -np.inf))
    hi.append(np.zeros(C * F))
    r += C * F
    rp = r + np.arange(P)  # s_f + s_g - y <= 1
    rows += [rp, rp, rp]
    cols += [pairs[:, 0], pairs[:, 1], F + C * F + np.arange(P)]
    vals += [np.ones(P), np.ones(P), -np.ones(P)]
    lo.append(np.full(P, -np.inf))
    hi.append(np.ones(P))
    r += P
    return (n_col, r, cost, np.concatenate(rows), np.concatenate(cols), np.concatenate(vals),
            np.concatenate(lo), np.concatenate(hi))


def _nogood_row(p: QPMProblem, S: np.ndarray, W: np.ndarray, c: int, d: int):
    F = p.num_all_features
    T = S[np.flatnonzero(W[c])]
    idx = np.concatenate([F + c * F + T, F + d * F + T])
    return idx, np.ones(idx.size), 2 * p.n_per_class - 1


def _read_mip(p: QPMProblem, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    F, C = p.A.shape
    S = np.flatnonzero(x[:F] > 0.5)
    W = (x[F:F + C * F].reshape(C, F) > 0.5)[:, S]
    return S, W


def run_highs(p: QPMProblem, T: float, workers: int) -> Row:
    import highspy
    t0 = time.perf_counter()
    n_col, n_row, cost, ri, ci, v, lo, hi = _mip_arrays(p)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", workers)
    h.setOptionValue("random_seed", 0)
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n_col, n_row
    lp.col_cost_ = cost
    lp.col_lower_, lp.col_upper_ = np.zeros(n_col), np.ones(n_col)
    lp.row_lower_ = np.where(np.isfinite(lo), lo, -inf)
    lp.row_upper_ = np.where(np.isfinite(hi), hi, inf)
    lp.sense_ = highspy.ObjSense.kMaximize
    order = np.lexsort((ri, ci))
    start = np.searchsorted(ci[order], np.arange(n_col + 1))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = start, ri[order], v[order]
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n_col, n_row
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n_col
    h.passModel(lp)
    build = time.perf_counter() - t0
    best_z, bound, rounds, cuts, last = None, None, 0, 0, ""
    while time.perf_counter() - t0 < T:
        h.setOptionValue("time_limit", max(1e-3, T - (time.perf_counter() - t0)))
        h.run()
        rounds += 1
        info = h.getInfo()
        if math.isfinite(info.mip_dual_bound) and abs(info.mip_dual_bound) < 1e20:
            bound = info.mip_dual_bound
        if info.primal_solution_status != 2:  # no feasible point
            break
        x = np.asarray(h.getSolution().col_value)
        S, W = _read_mip(p, x)
        if S.size != p.n_features or np.any(W.sum(axis=1) != p.n_per_class):
            break
        pairs = _collisions(W)
        if not pairs:
            best_z = p.objective(S, W)
            break
        last = f"; last round Z={p.objective(S, W):.2f} with {len(pairs)} colliding pairs"
        for c, d in pairs:
            idx, val, ub = _nogood_row(p, S, W, c, d)
            h.addRow(-inf, ub, idx.size, idx.astype(np.int32), val)
            cuts += 1
    return dict(objective=best_z, bound=bound, time=time.perf_counter() - t0,
                note=f"build {build:.0f}s, {rounds} rounds, {cuts} lazy cuts" + ("" if best_z is not None else last))


def run_gurobi(p: QPMProblem, T: float, workers: int) -> Row:
    try:
        import gurobipy as gp
        import scipy.sparse as sp
    except ImportError:
        return dict(objective=None, bound=None, time=0.0, note="gurobipy not installed")
    t0 = time.perf_counter()
    n_col, n_row, cost, ri, ci, v, lo, hi = _mip_arrays(p)
    if n_col > 2000 or n_row > 2000:
        return dict(objective=None, bound=None, time=0.0,
                    note=f"not run: {n_col} vars / {n_row} rows > free licence limit 2000")
    env = gp.Env(params={"OutputFlag": 0})
    m = gp.Model(env=env)
    m.Params.Threads, m.Params.Seed = workers, 0
    x = m.addMVar(n_col, vtype="B")
    M = sp.csr_matrix((v, (ri, ci)), shape=(n_row, n_col))
    fin_hi, fin_lo = np.isfinite(hi), np.isfinite(lo)
    m.addConstr(M[fin_hi] @ x <= hi[fin_hi])
    m.addConstr(M[fin_lo] @ x >= lo[fin_lo])
    m.setObjective(cost @ x, gp.GRB.MAXIMIZE)
    best_z, bound, rounds, cuts = None, None, 0, 0
    while time.perf_counter() - t0 < T:
        m.Params.TimeLimit = max(1e-3, T - (time.perf_counter() - t0))
        m.optimize()
        rounds += 1
        bound = m.ObjBound
        if m.SolCount == 0:
            break
        S, W = _read_mip(p, x.X)
        pairs = _collisions(W)
        if not pairs:
            best_z = p.objective(S, W)
            break
        for c, d in pairs:
            idx, _, ub = _nogood_row(p, S, W, c, d)
            m.addConstr(x[idx].sum() <= ub)
            cuts += 1
    return dict(objective=best_z, bound=bound, time=time.perf_counter() - t0,
                note=f"{rounds} rounds, {cuts} lazy cuts")


def _child(queue, fn, args) -> None:
    try:
        queue.put(fn(*args))
    except Exception as e:  # reported in the table
        queue.put(dict(objective=None, bound=None, time=0.0, note=f"failed: {type(e).__name__}: {str(e)[:80]}"))


def run_guarded(fn, args, hard_limit: float) -> Row:
    """Run a baseline in a forked process and kill it at ``hard_limit`` seconds (HiGHS can overrun
    its own time limit on the largest models, e.g. in presolve)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    try:
        row = queue.get(timeout=hard_limit)
    except queue_mod.Empty:
        proc.kill()
        row = dict(objective=None, bound=None, time=time.perf_counter() - t0,
                   note=f"killed at {hard_limit:.0f}s: did not stop at its time limit")
    proc.join(5)
    return row


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,small,cub,imagenet")
    ap.add_argument("--methods",
                    default="ours,ours-10x,cheap-bound,greedy,greedy+swap,cpsat-authors,highs,gurobi")
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--effort", type=float, default=DEFAULT_EFFORT, help="effort of ours")
    ap.add_argument("--long-factor", type=float, default=10.0, help="effort and time factor of ours-10x")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    print(f"# QPM solver benchmark  workers={args.workers} time-scale={args.time_scale} effort={args.effort:g} "
          f"seed={args.seed}  host cpus={os.cpu_count()}", flush=True)
    header = (f"{'size':9s} {'method':14s} {'objective':>12s} {'bound':>12s} {'gap':>8s} {'time s':>8s} "
              f"{'ratio':>8s}  note")
    for size in args.sizes.split(","):
        F, C, n, k, ipc, T0 = SIZES[size]
        T = T0 * args.time_scale
        A, B = synthetic_statistics(F, C, images_per_class=ipc, seed=args.seed)
        p = QPMProblem(A, B, n_features=n, n_per_class=k)
        print(f"\n## {size}: F={F} C={C} n_f*={n} n_wc={k}  limit {T:.0f}s  tau={p.tau:.4f} "
              f"(tau procedure {p.tau_time:.2f}s)  penalised pairs={int((np.triu(p.penalty, 1) > 0).sum())}",
              flush=True)
        rows: Dict[str, Row] = {}
        for meth in methods:
            if meth == "ours-10x" and size not in ("small", "cub"):
                continue
            t = time.perf_counter()
            try:
                if meth == "ours":
                    rows[meth] = run_ours(p, args.effort, T, args.workers)
                elif meth == "ours-10x":
                    rows[meth] = run_ours(p, args.effort * args.long_factor, T * args.long_factor, args.workers)
                elif meth == "cheap-bound":
                    rows[meth] = run_cheap_bound(p)
                elif meth == "greedy":
                    rows[meth] = run_greedy(p)
                elif meth == "greedy+swap":
                    rows[meth] = run_greedy_swap(p)
                elif meth == "cpsat-authors":
                    rows[meth] = run_guarded(run_cpsat_authors, (p, T, args.workers), 1.1 * T + 60)
                elif meth == "highs":
                    rows[meth] = run_guarded(run_highs, (p, T, args.workers), 1.1 * T + 60)
                elif meth == "gurobi":
                    rows[meth] = run_gurobi(p, T, args.workers)
                else:
                    raise ValueError(f"unknown method {meth!r}")
            except Exception as e:  # report the failure in the table, keep benchmarking
                rows[meth] = dict(objective=None, bound=None, time=time.perf_counter() - t,
                                  note=f"failed: {type(e).__name__}: {str(e)[:80]}")
            r = rows[meth]
            print(f"  .. {meth}: Z={r['objective']} bound={r['bound']} ({r['time']:.1f}s) {r['note']}", flush=True)
        best = max((r["objective"] for r in rows.values() if r["objective"] is not None), default=None)
        print(header)
        for meth, r in rows.items():
            z, b = r["objective"], r["bound"]
            ratio = f"{100 * z / best:7.3f}%" if z is not None and best else "      -"
            gap = f"{100 * (b / best - 1):7.2f}%" if b is not None and best else "      -"
            print(f"{size:9s} {meth:14s} {'-' if z is None else f'{z:.4f}':>12s} "
                  f"{'-' if b is None else f'{b:.4f}':>12s} {gap:>8s} {r['time']:8.1f} {ratio:>8s}  {r['note']}",
                  flush=True)


if __name__ == "__main__":
    main()

"""The set bound and certify mode against today's LP bound, on the synthetic instances of benchmarks/solver.py.

    python benchmarks/solver_bound.py --sizes mid,cub --candidates 10 --certify-effort 60 --certify-time 600

Per instance: the default solve (its Z, LP bound, wall time), then in the same process the set bound
(qpm_timm/solver/setbound.py) from the solve's incumbent and the LP bound's multipliers (its value, gap, time and
the ratio of its time to the solve's), with CHiQPM's forced pairs (``--rho``; the forced solve, the pair-free set
bound and the set bound with the pairs inside), and certify mode (qpm_timm/solver/certify.py) with its curve of
the gap over effort and time. Run it niced on a shared machine: the times are wall-clock seconds.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qpm_timm.solver import QPMProblem, closest_class_pairs, solve_qpm  # noqa: E402
from qpm_timm.solver.bound import lp_bound  # noqa: E402
from qpm_timm.solver.certify import certify  # noqa: E402
from qpm_timm.solver.setbound import set_bound, set_lagrangian_bound  # noqa: E402
from qpm_timm.solver.synthetic import synthetic_statistics  # noqa: E402

SIZES = {  # name: (F, C, n_features, n_per_class, images per class)
    "mid": (256, 40, 16, 4, 30),
    "cub": (2048, 200, 50, 5, 30),
    "imagenet": (2048, 1000, 50, 5, 10),
}


def _sets(sol) -> np.ndarray:
    return np.array([sol.selected[np.flatnonzero(sol.assignment[c])] for c in range(sol.assignment.shape[0])])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="mid,cub")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--effort", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--rho", type=float, default=0.5, help="forced pairs (0: skip that part)")
    ap.add_argument("--certify-effort", type=float, default=0.0, help="certify mode's effort (0: skip it)")
    ap.add_argument("--certify-time", type=float, default=600.0)
    args = ap.parse_args(argv)
    print(f"# set bound benchmark  seed={args.seed} effort={args.effort:g} workers={args.workers} "
          f"candidates={args.candidates} host cpus={os.cpu_count()}", flush=True)
    for size in args.sizes.split(","):
        F, C, n, k, ipc = SIZES[size]
        A, B = synthetic_statistics(F, C, images_per_class=ipc, seed=args.seed)
        p = QPMProblem(A, B, n_features=n, n_per_class=k)
        sol = solve_qpm(p, effort=args.effort, workers=args.workers, seed=0)
        t = time.perf_counter()
        lb, nu = lp_bound(p)
        t_lp = time.perf_counter() - t
        t = time.perf_counter()
        sb, m, lp = set_bound(p, nu, _sets(sol), candidates=args.candidates, rounds=args.rounds)
        t_sb = time.perf_counter() - t
        z = sol.objective
        print(f"\n## {size}: F={F} C={C} n_f*={n} n_wc={k}", flush=True)
        print(f"{size:9s} solve          Z {z:10.4f}  LP bound {lb:10.4f}  gap {100 * (lb / z - 1):6.2f} %  "
              f"solve {sol.wall_time + p.tau_time:7.1f} s (LP bound {t_lp:.1f} s)", flush=True)
        print(f"{size:9s} set bound      Z {z:10.4f}  bound    {sb:10.4f}  gap {100 * (sb / z - 1):6.2f} %  "
              f"{t_sb:7.1f} s = {t_sb / (sol.wall_time + p.tau_time):.2f} x the solve, {lp.iterations} simplex "
              f"iterations, {len(lp.x_cols)} sets, {len(lp.w_cols)} places", flush=True)
        if args.rho > 0:
            pp = QPMProblem(A, B, n_features=n, n_per_class=k, pairs=closest_class_pairs(A, args.rho))
            fsol = solve_qpm(pp, effort=args.effort, workers=args.workers, seed=0)
            t = time.perf_counter()
            with_pairs = set_lagrangian_bound(pp, m)
            t_pb = time.perf_counter() - t
            fz = fsol.objective
            print(f"{size:9s} forced pairs   Z {fz:10.4f}  {len(pp.pairs)} pairs; LP bound (pair-free) {lb:.4f} "
                  f"gap {100 * (lb / fz - 1):.2f} %; set bound pair-free {sb:.4f} gap {100 * (sb / fz - 1):.2f} %; "
                  f"set bound with the pairs {with_pairs:.4f} gap {100 * (with_pairs / fz - 1):.2f} % "
                  f"(+{t_pb:.1f} s); pairs' price: measured >= {sb - with_pairs:.2f} of the bound, "
                  f"search {z - fz:.2f}", flush=True)
        if args.certify_effort > 0:
            t = time.perf_counter()
            res = certify(p, sol.selected, sol.assignment, target_gap=0.01, effort=args.certify_effort,
                          time_limit=args.certify_time, candidates=args.candidates, lp_rounds=args.rounds,
                          bound=sol.bound)
            cut = ", CUT BY THE WALL CLOCK" if res.cut_by_wall_clock else ""
            print(f"{size:9s} certify        Z {res.objective:10.4f}  bound    {res.bound:10.4f}  gap "
                  f"{100 * res.gap:6.2f} %  {time.perf_counter() - t:7.1f} s, {res.nodes} nodes, {res.open_nodes} "
                  f"open, effort {res.effort_used:.3g}/{res.effort:g}{cut}; curve (units, s, gap %):", flush=True)
            step = max(1, len(res.curve) // 12)
            for u, s, b, zz in res.curve[::step] + res.curve[-1:]:
                print(f"{'':9s}   {u:9.3f} {s:8.1f} {100 * (b / zz - 1):7.3f}", flush=True)


if __name__ == "__main__":
    main()

"""The QPM solver's effort on a busy machine: wall time against the time limit, and the same answer.

For every size the same solve (inputs, seed, effort, workers) runs twice: on the machine as it is, then while
``--burners`` busy-loop processes keep cores busy. Prints both wall times, the effort used, whether the
wall-clock cap cut a run, the loaded wall time as a fraction of the time limit (target at the default effort:
<= 0.5 on this project's loaded 2-core machine) and whether the two assignments are identical (they must be).

    python benchmarks/solver_effort.py --sizes concepts,drift,mid,cub --burners 2

Instances: :func:`qpm_timm.solver.synthetic.synthetic_statistics`, seed 0; "drift" is the 96 x 24 instance on
which a time-based budget returned load-dependent answers, "concepts" has the embedded default's shape (a
128-channel backbone, 48 classes, 12 x 3), cub and imagenet are those of ``benchmarks/solver.py``.
"""
import argparse
import hashlib
import os
import subprocess
import sys
from typing import List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _common import load_text  # noqa: E402
from solver import SIZES as BENCH_SIZES  # noqa: E402

from qpm_timm.solver import DEFAULT_EFFORT, DEFAULT_TIME_LIMIT, QPMProblem, check_solution, solve_qpm  # noqa: E402
from qpm_timm.solver.synthetic import synthetic_statistics  # noqa: E402

SIZES = {  # name: (F, C, n_features, n_per_class, images per class)
    "concepts": (128, 48, 12, 3, 30),
    "drift": (96, 24, 10, 3, 30),
    "mid": (160, 40, 12, 3, 30),
    **{name: BENCH_SIZES[name][:5] for name in ("cub", "imagenet")},
}


def _digest(sol) -> str:
    return hashlib.sha256(sol.selected.tobytes() + sol.assignment.tobytes()).hexdigest()[:12]


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="concepts,drift,mid,cub")
    ap.add_argument("--effort", type=float, default=DEFAULT_EFFORT)
    ap.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT)
    ap.add_argument("--burners", type=int, default=2, help="busy-loop processes during the second run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=3, help="solver seed")
    args = ap.parse_args(argv)
    print(f"# effort={args.effort:g} time limit={args.time_limit:g}s workers={args.workers} seed={args.seed} "
          f"burners={args.burners} host cpus={os.cpu_count()}", flush=True)
    print(f"{'size':9s} {'run':7s} {'wall s':>7s} {'/limit':>7s} {'effort used':>11s} {'cut':>5s} "
          f"{'objective':>10s} {'gap':>7s}  {'assignment':12s}  load")
    for size in args.sizes.split(","):
        F, C, n, k, ipc = SIZES[size]
        A, B = synthetic_statistics(F, C, images_per_class=ipc, seed=0)
        p = QPMProblem(A, B, n_features=n, n_per_class=k)
        digests = []
        for run in ("as-is", "loaded"):
            burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                       for _ in range(args.burners if run == "loaded" else 0)]
            try:
                sol = solve_qpm(p, effort=args.effort, time_limit=args.time_limit, seed=args.seed,
                                workers=args.workers)
                load = load_text()
            finally:
                for proc in burners:
                    proc.kill()
                    proc.wait()
            check_solution(p, sol)
            digests.append(_digest(sol))
            print(f"{size:9s} {run:7s} {sol.wall_time:7.1f} {sol.wall_time / args.time_limit:7.2f} "
                  f"{sol.effort_used:11.2f} {str(sol.cut_by_wall_clock):>5s} {sol.objective:10.4f} "
                  f"{100 * sol.gap:6.2f}%  {digests[-1]:12s}  {load}", flush=True)
        print(f"{size:9s} identical assignments: {digests[0] == digests[1]}", flush=True)


if __name__ == "__main__":
    main()

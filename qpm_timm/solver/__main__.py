"""``python -m qpm_timm.solver certify statistics.npz``: solve the QPM problem of a statistics file (or read its
solution) and prove it close to optimal by the branch and bound of :mod:`qpm_timm.solver.certify`, printing
incumbent, bound and gap as it goes (docs/METHOD.md, "Certify mode")."""
import argparse
import sys

from ..stats import QPMStatistics
from . import DEFAULT_EFFORT, QPMProblem, QPMSolution, closest_class_pairs, solve_qpm
from .certify import certify


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    c = commands.add_parser('certify', help='prove a solution within a gap of the optimum (branch and bound)')
    c.add_argument('statistics', help='a statistics.npz (QPMStatistics)')
    c.add_argument('--n-features', type=int, default=50)
    c.add_argument('--n-per-class', type=int, default=5)
    c.add_argument('--rho', type=float, default=None, help="CHiQPM's forced pairs: int(C * rho) closest pairs")
    c.add_argument('--solution', default=None, help='a solution.json of this problem to certify (else solved here)')
    c.add_argument('--effort', type=float, default=DEFAULT_EFFORT, help='effort of the solve (deterministic units)')
    c.add_argument('--certify-effort', type=float, default=100.0, help='effort of the branch and bound (units)')
    c.add_argument('--gap', type=float, default=0.01, help='target gap (bound / objective - 1)')
    c.add_argument('--time-limit', type=float, default=600.0, help='wall-clock cap of the branch and bound (s)')
    c.add_argument('--candidates', type=int, default=10, help="candidate features per class of the set bound")
    c.add_argument('--state', default=None, help='resumable state file (JSON); an existing one is continued')
    c.add_argument('--seed', type=int, default=0)
    c.add_argument('--workers', type=int, default=None)
    args = parser.parse_args(argv)
    stats = QPMStatistics.load(args.statistics)
    pairs = None if args.rho is None else closest_class_pairs(stats.A, args.rho)
    problem = QPMProblem(stats.A, stats.B, n_features=args.n_features, n_per_class=args.n_per_class, pairs=pairs)
    if args.solution:
        sol = QPMSolution.load(args.solution, problem)
    else:
        sol = solve_qpm(problem, effort=args.effort, seed=args.seed, workers=args.workers)
    print(f"incumbent: {sol.summary()}", flush=True)
    res = certify(problem, sol.selected, sol.assignment, target_gap=args.gap, effort=args.certify_effort,
                  time_limit=args.time_limit, candidates=args.candidates, state_path=args.state, progress=True,
                  bound=sol.bound)
    cut = ', CUT BY THE WALL CLOCK' if res.cut_by_wall_clock else ''
    print(f"certified: Z = {res.objective:.4f}, bound {res.bound:.4f} (gap {100 * res.gap:.3f} %, root "
          f"{100 * (res.root_bound / res.objective - 1):.3f} %), {'proven' if res.proven else 'not proven'} within "
          f"{100 * args.gap:g} %, {res.nodes} nodes, {res.open_nodes} open, effort {res.effort_used:.3g} of "
          f"{res.effort:g} units{cut}")
    print("curve (effort units, seconds, bound, Z, gap %):")
    step = max(1, len(res.curve) // 20)
    for u, s, b, z in res.curve[::step] + res.curve[-1:]:
        print(f"  {u:10.3f} {s:9.1f} {b:12.4f} {z:12.4f} {100 * (b / z - 1):8.3f}")
    return 0 if res.proven else 1


if __name__ == '__main__':
    sys.exit(main())

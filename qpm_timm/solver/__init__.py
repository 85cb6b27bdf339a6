"""The QPM assignment solver (OR-Tools CP-SAT). docs/METHOD.md, "The optimisation problem".

    problem = QPMProblem(A, B=None, R=None, n_features=50, n_per_class=5, r_threshold=None,
                         pairs=closest_class_pairs(A, rho=0.5), idealize=False)   # pairs: CHiQPM
    solution = solve_qpm(problem, effort=DEFAULT_EFFORT, time_limit=DEFAULT_TIME_LIMIT, seed=0, workers=None, log=False)
    solution.bound, solution.gap, solution.cut_by_wall_clock, solution.summary()
    check_solution(problem, solution); solution.save(path); QPMSolution.load(path, problem)
"""
from .edit import EDIT_EFFORT, EditImpossible, solve_edit
from .forced import PairsInfeasible
from .pairs import closest_class_pairs, pair_shares, sharing_pairs
from .problem import QPMProblem, derive_redundancy
from .solution import QPMSolution, check_solution
from .solve import DEFAULT_EFFORT, DEFAULT_TIME_LIMIT, solve_qpm

__all__ = ["DEFAULT_EFFORT", "DEFAULT_TIME_LIMIT", "EDIT_EFFORT", "EditImpossible", "PairsInfeasible",
           "QPMProblem", "QPMSolution", "check_solution",
           "closest_class_pairs", "derive_redundancy", "pair_shares", "sharing_pairs", "solve_edit", "solve_qpm"]

"""The QPM assignment solver (OR-Tools CP-SAT). docs/METHOD.md, "The optimisation problem".

    problem = QPMProblem(A, B=None, R=None, n_features=50, n_per_class=5, r_threshold=None)
    solution = solve_qpm(problem, effort=DEFAULT_EFFORT, time_limit=DEFAULT_TIME_LIMIT, seed=0, workers=None, log=False)
    solution.bound, solution.gap, solution.cut_by_wall_clock, solution.summary()
    check_solution(problem, solution); solution.save(path); QPMSolution.load(path, problem)
"""
from .problem import QPMProblem, derive_redundancy
from .solution import QPMSolution, check_solution
from .solve import DEFAULT_EFFORT, DEFAULT_TIME_LIMIT, solve_qpm

__all__ = ["DEFAULT_EFFORT", "DEFAULT_TIME_LIMIT", "QPMProblem", "QPMSolution", "check_solution", "derive_redundancy",
           "solve_qpm"]

"""The QPM assignment solver (OR-Tools CP-SAT). Spec: QPM_METHOD.md, "The optimisation problem".

    problem = QPMProblem(A, B=None, R=None, n_features=50, n_per_class=5, r_threshold=None)
    solution = solve_qpm(problem, time_limit=120.0, seed=0, workers=None, log=False)
    check_solution(problem, solution); solution.save(path); QPMSolution.load(path, problem)
"""
from .problem import QPMProblem, derive_redundancy
from .solution import QPMSolution, check_solution
from .solve import solve_qpm

__all__ = ["QPMProblem", "QPMSolution", "check_solution", "derive_redundancy", "solve_qpm"]

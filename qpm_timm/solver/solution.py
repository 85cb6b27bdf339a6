"""The solver's result: QPMSolution, its constraint check, its report line and its JSON persistence."""
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from ..atomic import atomic_write
from .pairs import pair_shares, sharing_pairs
from .problem import QPMProblem

__all__ = ["QPMSolution", "check_solution"]

_FORMAT = "qpm-solution-v1"


@dataclass
class QPMSolution:
    """A feasible QPM solution.

    ``selected``: sorted int array (n_features,) into the F features; ``assignment``: bool
    (C, n_features), ``assignment[c, j]`` <=> class c uses ``selected[j]``; ``objective``: Z in float
    units; ``bound``: proven upper bound on Z (float units) or None; ``status``: "optimal" |
    "feasible"; ``wall_time``: seconds; ``settings``: solver settings and derived quantities;
    ``input_hash``: :meth:`QPMProblem.input_hash` of the problem it solves; ``effort``: the
    deterministic work budget the search was given and ``effort_used`` what it spent (None for
    solutions not made by ``solve_qpm``); ``time_limit``: the wall-clock safety cap (seconds);
    ``cut_by_wall_clock``: True when that cap stopped the search before its effort was spent (then,
    and only then, the result can depend on machine load). :attr:`gap` is ``bound / objective - 1``.
    """
    selected: np.ndarray
    assignment: np.ndarray
    objective: float
    bound: Optional[float]
    status: str
    wall_time: float
    settings: Dict[str, Any] = field(default_factory=dict)
    input_hash: str = ""
    effort: Optional[float] = None
    effort_used: Optional[float] = None
    time_limit: Optional[float] = None
    cut_by_wall_clock: bool = False

    @property
    def gap(self) -> Optional[float]:
        """Relative gap ``bound / objective - 1`` (None without a bound or for objective <= 0): the
        solution is certified within this fraction of the optimum."""
        if self.bound is None or not self.objective > 0:
            return None
        return max(0.0, float(self.bound) / float(self.objective) - 1.0)

    def summary(self) -> str:
        """The one-line report of a solve (what the log, train.py and the model card show), with a
        loud warning when the wall clock cut the search."""
        gap = "n/a" if self.gap is None else f"{100 * self.gap:.2f} %"
        bound = "none" if self.bound is None else f"{self.bound:.4f}"
        effort = "" if self.effort is None else \
            f", effort {self.effort_used or 0.0:.3g} of {self.effort:.3g} deterministic units"
        line = (f"Z = {self.objective:.4f}, bound {bound} (gap {gap}), {self.status}{effort}, "
                f"{self.wall_time:.1f} s")
        if self.cut_by_wall_clock:
            line += (f"; WARNING: the time limit ({self.time_limit:g} s) cut the search before its effort "
                     f"was spent, so this result may depend on machine load: raise the time limit or "
                     f"lower the effort")
        return line

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": _FORMAT,
            "selected": [int(x) for x in self.selected],
            "assignment": [[int(x) for x in row] for row in self.assignment],
            "objective": float(self.objective),
            "bound": None if self.bound is None else float(self.bound),
            "status": self.status,
            "wall_time": float(self.wall_time),
            "settings": self.settings,
            "input_hash": self.input_hash,
            "gap": self.gap,
            "effort": self.effort,
            "effort_used": self.effort_used,
            "time_limit": self.time_limit,
            "cut_by_wall_clock": bool(self.cut_by_wall_clock),
        }

    def save(self, path) -> None:
        """Write JSON atomically (temporary file in the same folder, then ``os.replace``)."""
        with atomic_write(path) as fh:
            json.dump(self.to_dict(), fh, indent=1)

    @classmethod
    def load(cls, path, problem: Optional[QPMProblem] = None) -> "QPMSolution":
        """Read a saved solution; with ``problem`` given, raise ValueError if it was computed for
        different inputs (hash mismatch) or violates a constraint."""
        with open(os.fspath(path)) as fh:
            d = json.load(fh)
        if d.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a QPM solution file (format {d.get('format')!r}, "
                             f"expected {_FORMAT!r})")
        sol = cls(selected=np.asarray(d["selected"], dtype=np.int64),
                  assignment=np.asarray(d["assignment"], dtype=bool).reshape(len(d["assignment"]), -1),
                  objective=float(d["objective"]), bound=d["bound"], status=d["status"],
                  wall_time=float(d["wall_time"]), settings=d.get("settings", {}),
                  input_hash=d.get("input_hash", ""), effort=d.get("effort"),
                  effort_used=d.get("effort_used"), time_limit=d.get("time_limit"),
                  cut_by_wall_clock=bool(d.get("cut_by_wall_clock", False)))
        if problem is not None:
            h = problem.input_hash()
            if h != sol.input_hash:
                raise ValueError(f"{path} was solved for different inputs (hash {sol.input_hash[:12]}... "
                                 f"!= {h[:12]}... of the given problem); solve this problem again")
            check_solution(problem, sol)
        return sol


def check_solution(problem: QPMProblem, solution: QPMSolution, atol: float = 1e-6) -> None:
    """Raise ValueError on any violated constraint (docs/METHOD.md, "The optimisation problem"), a wrong
    objective or a bound below it."""
    S = np.asarray(solution.selected)
    W = np.asarray(solution.assignment)
    n, k, C, F = problem.n_features, problem.n_per_class, problem.num_classes, problem.num_all_features
    if S.ndim != 1 or S.size != n:
        raise ValueError(f"selected must hold n_features={n} indices, got shape {S.shape}")
    if not np.issubdtype(S.dtype, np.integer):
        raise ValueError(f"selected must be integer indices, got dtype {S.dtype}")
    if np.any(S < 0) or np.any(S >= F):
        raise ValueError(f"selected indices must lie in [0, {F}), got {S.min()}..{S.max()}")
    if np.any(np.diff(S) <= 0):
        raise ValueError("selected must be sorted and free of duplicates")
    if W.shape != (C, n) or W.dtype != bool:
        raise ValueError(f"assignment must be a bool array of shape ({C}, {n}), got {W.dtype} {W.shape}")
    per_class = W.sum(axis=1)
    bad = np.flatnonzero(per_class != k)
    if bad.size:
        raise ValueError(f"classes {bad[:10].tolist()} use {per_class[bad[:10]].tolist()} features, "
                         f"every class needs exactly n_per_class={k}")
    _, counts = np.unique(W, axis=0, return_counts=True)
    if counts.max() > 1:
        raise ValueError(f"{int((counts[counts > 1]).sum())} classes share a feature set with another "
                         f"class; the uniqueness constraint requires all sets to differ")
    _check_pairs(problem, W)
    z = problem.objective(S, W)
    if not abs(z - solution.objective) <= atol * max(1.0, abs(z)):
        raise ValueError(f"solution.objective={solution.objective} differs from the recomputed Z={z}")
    if solution.bound is not None and solution.bound < z - atol * max(1.0, abs(z)):
        raise ValueError(f"solution.bound={solution.bound} lies below the objective Z={z}: not a valid bound")
    if solution.status not in ("optimal", "feasible"):
        raise ValueError(f"status must be 'optimal' or 'feasible', got {solution.status!r}")


def _check_pairs(problem: QPMProblem, W: np.ndarray) -> None:
    """CHiQPM (docs/METHOD.md, "CHiQPM: forced pairs"): every forced pair shares exactly ``n_wc - 1`` features,
    or, idealised, at least as many class pairs as were forced do."""
    if problem.pairs is None:
        return
    k = problem.n_per_class
    if problem.idealize:
        found = len(sharing_pairs(W, k - 1))
        if found < len(problem.pairs):
            raise ValueError(f"only {found} class pairs share n_per_class - 1 = {k - 1} features; the idealised "
                             f"CHiQPM needs at least {len(problem.pairs)} (the number of forced pairs)")
        return
    shares = pair_shares(W, problem.pairs)
    bad = np.flatnonzero(shares != k - 1)
    if bad.size:
        a, b = problem.pairs[bad[0]]
        raise ValueError(f"{bad.size} forced pairs do not share exactly n_per_class - 1 = {k - 1} features, e.g. "
                         f"classes {a} and {b} share {shares[bad[0]]}")

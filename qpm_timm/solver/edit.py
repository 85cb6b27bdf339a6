"""The re-solve of an edit (docs/METHOD.md, "Editing"): the QPM problem with forbidden features, forbidden and
required (class, feature) pairs, searched from the model's own selection (:func:`solve_edit`)."""
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .problem import QPMProblem
from .solution import QPMSolution, check_solution
from .solve import DEFAULT_TIME_LIMIT, solve_qpm

__all__ = ['EDIT_EFFORT', 'EditImpossible', 'solve_edit']

EDIT_EFFORT = 2.0  # deterministic units (qpm_timm.solver.solve), as the embedded default's solve; the re-solve starts
# from the model's own solution (on the README's edit of the embedded default, effort 5 gives the same Z)


class EditImpossible(ValueError):
    """No QPM satisfies the edit (or the re-solve found none within its effort); the message says why."""


def _violation_margin(problem: QPMProblem) -> float:
    """More than any two QPM solutions' Z can differ by (in Z units): ``Z_A`` by at most ``z_a_factor * n_c * n_wc *
    (max A - min A)`` (2000 for a normalised A), ``Z_R`` by the largest ``n_f*(n_f* - 1)/2`` penalties, ``Z_B`` by
    ``n_f* (max B - min B)``."""
    n, k, C = problem.n_features, problem.n_per_class, problem.num_classes
    z_a = problem.z_a_factor * C * k * float(problem.A.max() - problem.A.min())
    z_r = n * (n - 1) / 2 * float(problem.penalty.max(initial=0.0))
    z_b = n * float(problem.B.max() - problem.B.min())
    return z_a + z_r + z_b + 1.0


def _check_feasible(problem: QPMProblem, allowed: np.ndarray, forbid: Sequence[Tuple[int, int]],
                    require: Sequence[Tuple[int, int]], label: Callable[[int], str]) -> None:
    """Refuse edits no QPM satisfies, naming why (``allowed``: features not forbidden; pairs over problem indices;
    ``label(f)`` names a feature)."""
    def name(c: int, f: int) -> str:
        return f'class {c} : {label(f)}'

    n, k, C = problem.n_features, problem.n_per_class, problem.num_classes
    both = sorted(set(forbid) & set(require))
    if both:
        raise EditImpossible(f'contradictory edit: {name(*both[0])} is both forbidden and required.')
    for c, f in require:
        if not allowed[f]:
            raise EditImpossible(f'contradictory edit: {name(c, f)} is required but its feature is forbidden.')
    if allowed.sum() < n:
        raise EditImpossible(f'only {int(allowed.sum())} features remain after the forbidden ones, but a QPM keeps '
                             f'n_f* = {n}; forbid fewer features.')
    per_class: Dict[int, set] = {}
    for c, f in require:
        per_class.setdefault(c, set()).add(f)
    for c, fs in per_class.items():
        if len(fs) > k:
            raise EditImpossible(f'class {c} is required to use {len(fs)} features, but every class uses exactly '
                                 f'n_wc = {k}.')
    required = {f for _, f in require}
    if len(required) > n:
        raise EditImpossible(f'{len(required)} different features are required, but a QPM keeps n_f* = {n}.')
    full = {}
    for c, fs in per_class.items():
        if len(fs) == k:
            other = full.setdefault(frozenset(fs), c)
            if other != c:
                raise EditImpossible(f'classes {other} and {c} are both required to use the same {k} features, but '
                                     f'no two classes may share their set.')
    forbidden_for = np.tile(allowed, (C, 1))
    for c, f in forbid:
        forbidden_for[c, f] = False
    short = np.flatnonzero(forbidden_for.sum(axis=1) < k)
    if short.size:
        raise EditImpossible(f'class {int(short[0])} has fewer than n_wc = {k} features left that it may use.')


def _start_selection(problem: QPMProblem, current: np.ndarray, required: np.ndarray) -> np.ndarray:
    """The model's own selection, repaired: required features in, then the best of the current ones, then the best
    others by summed A (the problem is already restricted to the allowed features)."""
    n = problem.n_features
    score = problem.A.clip(min=0).sum(axis=1) + problem.B
    keep = list(dict.fromkeys(int(f) for f in required))
    for group in (current, np.arange(problem.num_all_features)):
        for f in sorted((int(f) for f in group), key=lambda f: (-score[f], f)):
            if len(keep) == n:
                break
            if f not in keep:
                keep.append(f)
    return np.sort(np.asarray(keep[:n], dtype=np.int64))


def solve_edit(problem: QPMProblem, current: np.ndarray, forbid_features: Sequence[int] = (),
               forbid: Sequence[Tuple[int, int]] = (), require: Sequence[Tuple[int, int]] = (), *,
               effort: float = EDIT_EFFORT, seed: int = 0, time_limit: float = DEFAULT_TIME_LIMIT,
               workers: Optional[int] = None, log: bool = False,
               label: Callable[[int], str] = lambda f: f'feature {f}') -> QPMSolution:
    """The QPM problem with an edit's constraints (docs/METHOD.md, "Editing"), indices into ``problem``'s features:
    ``forbid_features`` leave the problem; a forbidden ``(class, feature)`` pair has its ``A`` lowered and a
    required one raised by ``M`` (:func:`_violation_margin` over ``z_a_factor``), so every solution that keeps
    the edit beats every one that breaks it and, among those that keep it, the order by ``Z`` is unchanged. The
    search starts from ``current`` (the model's own selection). Returns a solution of ``problem`` (Z recomputed, the
    bound shifted back, so still a proven bound of the edited problem), checked against every constraint; ``label``
    names a feature in the refusals."""
    allowed = np.ones(problem.num_all_features, dtype=bool)
    allowed[list(forbid_features)] = False
    forbid, require = sorted(set(forbid)), sorted(set(require))
    _check_feasible(problem, allowed, forbid, require, label)
    keep = np.flatnonzero(allowed)
    position = -np.ones(problem.num_all_features, dtype=np.int64)
    position[keep] = np.arange(keep.size)
    margin = _violation_margin(problem) / problem.z_a_factor
    A = problem.A[keep].copy()
    for c, f in forbid:
        if allowed[f]:
            A[position[f], c] -= margin
    for c, f in require:
        A[position[f], c] += margin
    sub = problem.restricted(keep, A)
    start = _start_selection(sub, position[np.intersect1d(current, keep)], position[[f for _, f in require]])
    found = solve_qpm(sub, effort=effort, time_limit=time_limit, seed=seed, workers=workers, log=log, start=start)
    S = keep[found.selected]
    W = np.asarray(found.assignment, dtype=bool)
    uses = {(c, int(S[j])) for c, j in zip(*np.nonzero(W))}
    broken = [p for p in require if p not in uses] + [p for p in forbid if p in uses]
    if broken:
        raise EditImpossible(f'the re-solve found no QPM that keeps the edit within effort {effort:g} (e.g. class '
                             f'{broken[0][0]} : {label(broken[0][1])}); the edit may be impossible: forbid less, '
                             f'or raise the effort.')
    shift = problem.z_a_factor * margin * len(require)
    bound = None if found.bound is None else float(found.bound) - shift
    Z = problem.objective(S, W)
    status = 'optimal' if bound is not None and bound <= Z + 1e-9 * max(1.0, abs(Z)) else 'feasible'
    solution = QPMSolution(
        selected=S, assignment=W, objective=float(Z), bound=None if bound is None else max(bound, float(Z)),
        status=status, wall_time=found.wall_time, settings={**found.settings, 'edit': True},
        input_hash=problem.input_hash(), effort=found.effort, effort_used=found.effort_used,
        time_limit=found.time_limit, cut_by_wall_clock=found.cut_by_wall_clock)
    check_solution(problem, solution)
    return solution

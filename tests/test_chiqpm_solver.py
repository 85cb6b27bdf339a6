"""CHiQPM's forced pairs in the solver (docs/METHOD.md, "CHiQPM: forced pairs", "CHiQPM: idealising"): the pairs,
exactness against exhaustive search, the idealising step, an infeasible request."""
import itertools
import math

import numpy as np
import pytest

from qpm_timm.solver import (
    PairsInfeasible,
    QPMProblem,
    QPMSolution,
    check_solution,
    closest_class_pairs,
    pair_shares,
    sharing_pairs,
    solve_qpm,
)
from qpm_timm.solver.forced import assign_forced, assign_idealized


def _assignments(p: QPMProblem, S: np.ndarray):
    """Every assignment of distinct n_wc-subsets of S to the classes, as (C, n) bool arrays."""
    sets = list(itertools.combinations(range(len(S)), p.n_per_class))
    for perm in itertools.permutations(range(len(sets)), p.num_classes):
        W = np.zeros((p.num_classes, len(S)), dtype=bool)
        for c, t in enumerate(perm):
            W[c, list(sets[t])] = True
        yield W


def _exhaustive(p: QPMProblem, accept, selections=None) -> float:
    """The best Z over all selections (or the given ones) and assignments that ``accept(W)``."""
    best = -math.inf
    for S in selections or itertools.combinations(range(p.num_all_features), p.n_features):
        S = np.array(S)
        for W in _assignments(p, S):
            if accept(W):
                best = max(best, p.objective(S, W))
    return best


def _tiny(seed: int, pairs, idealize: bool = False) -> QPMProblem:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(7, 4))
    return QPMProblem(A / np.abs(A).max(), rng.normal(size=7) * 0.3, n_features=4, n_per_class=2, pairs=pairs,
                      idealize=idealize)


@pytest.mark.parametrize("seed", [0, 1])
def test_forced_pairs_match_exhaustive_optimum_on_tiny_instances(seed):
    pairs = [(0, 1), (1, 2), (0, 3)]
    p = _tiny(seed, pairs)
    sol = solve_qpm(p, effort=0.5, seed=0, workers=2)
    check_solution(p, sol)
    assert np.all(pair_shares(sol.assignment, np.array(pairs)) == 1)
    opt = _exhaustive(p, lambda W: np.all(pair_shares(W, np.array(pairs)) == 1))
    assert sol.objective == pytest.approx(opt, abs=1e-7)
    assert sol.status == "optimal" and sol.bound >= opt - 1e-9
    assert sol.settings["pairs"] == [list(x) for x in pairs] and sol.settings["z_without_pairs"] >= opt - 1e-9


def test_forced_and_idealized_assignment_for_a_selection_match_exhaustive_search():
    pairs = np.array([(0, 1), (2, 3)])
    p = _tiny(2, pairs, idealize=True)
    S = np.array([0, 2, 4, 6])
    forced, _, optimal, _ = assign_forced(p, S, None, 5.0, 2, 0, lambda: 60.0)
    assert optimal and np.all(pair_shares(forced, pairs) == 1)
    assert p.objective(S, forced) == pytest.approx(
        _exhaustive(p, lambda W: np.all(pair_shares(W, pairs) == 1), [S]), abs=1e-7)
    candidates = sharing_pairs(forced, 1)
    ideal, _, optimal, _ = assign_idealized(p, S, forced, 5.0, 2, 0, lambda: 60.0)
    assert optimal and pair_shares(ideal, candidates).tolist().count(1) >= len(pairs)
    assert p.objective(S, ideal) == pytest.approx(
        _exhaustive(p, lambda W: (pair_shares(W, candidates) == 1).sum() >= len(pairs), [S]), abs=1e-7)
    assert p.objective(S, ideal) >= p.objective(S, forced) - 1e-9


def test_closest_class_pairs_are_the_nearest_columns_of_a_each_pair_once():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(30, 12))
    pairs = closest_class_pairs(A, 0.5)
    dist = {(a, b): np.linalg.norm(A[:, a] - A[:, b]) for a, b in itertools.combinations(range(12), 2)}
    expected = sorted(dist, key=dist.get)[:6]
    assert [tuple(x) for x in pairs] == expected
    assert np.array_equal(closest_class_pairs(7.0 * A, 0.5), pairs)  # scale-free, as the authors' max-normalised A
    assert len(closest_class_pairs(A, 0.0)) == 0


def test_an_unsatisfiable_pair_request_is_named_not_searched_forever():
    # four classes pairwise sharing exactly 1 of 2 features out of 4: no such four 2-sets exist
    A = np.random.default_rng(0).normal(size=(6, 4))
    p = QPMProblem(A, n_features=4, n_per_class=2, pairs=list(itertools.combinations(range(4), 2)))
    with pytest.raises(PairsInfeasible, match="cannot be satisfied.*lower rho"):
        solve_qpm(p, effort=1, workers=2)


@pytest.mark.parametrize("pairs, message", [([(0, 0)], "with itself"), ([(0, 1), (1, 0)], "given 2 times"),
                                            ([(0, 9)], r"\[0, 4\)")])
def test_bad_pairs_are_refused_with_the_reason(pairs, message):
    with pytest.raises(ValueError, match=message):
        _tiny(0, pairs)
    with pytest.raises(ValueError, match="needs forced pairs"):
        _tiny(0, None, idealize=True)


def test_a_solution_breaking_a_forced_pair_is_refused_and_pairs_change_the_input_hash():
    plain, forced = _tiny(0, None), _tiny(0, [(0, 1)])
    assert plain.input_hash() != forced.input_hash() != _tiny(0, [(0, 1)], idealize=True).input_hash()
    S = np.array([0, 1, 2, 3])
    W = np.zeros((4, 4), dtype=bool)
    for c, t in enumerate([(0, 1), (2, 3), (0, 2), (1, 3)]):  # classes 0 and 1 share nothing
        W[c, list(t)] = True
    sol = QPMSolution(S, W, forced.objective(S, W), None, "feasible", 0.0)
    check_solution(plain, sol)
    with pytest.raises(ValueError, match="classes 0 and 1 share 0"):
        check_solution(forced, sol)


def test_forced_pairs_solve_depends_on_effort_and_seed_only_not_on_the_worker_count():
    from qpm_timm.solver.synthetic import synthetic_statistics
    A, B = synthetic_statistics(64, 20, seed=1)
    p = QPMProblem(A, B, n_features=8, n_per_class=3, pairs=closest_class_pairs(A, 0.5), idealize=True)
    runs = [solve_qpm(p, effort=0.3, seed=3, workers=w) for w in (2, 3)]
    for sol in runs:
        check_solution(p, sol)
        assert not sol.cut_by_wall_clock
    assert np.array_equal(runs[0].selected, runs[1].selected)
    assert np.array_equal(runs[0].assignment, runs[1].assignment)

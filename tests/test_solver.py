"""Tests of the QPM solver (qpm_timm.solver): exactness, bound, constraints, determinism under load,
persistence, errors."""
import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from ortools.linear_solver import pywraplp

from qpm_timm.solver import DEFAULT_EFFORT, QPMProblem, QPMSolution, check_solution, solve_qpm
from qpm_timm.solver.bound import lagrangian_bound, lp_bound
from qpm_timm.solver.heuristic import _swap_deltas, assign_classes
from qpm_timm.solver.synthetic import synthetic_statistics

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)


def _exhaustive_optimum(p: QPMProblem) -> float:
    """True optimum by enumeration: every S, every assignment of distinct n_wc-sets to classes."""
    F, C = p.A.shape
    n, k = p.n_features, p.n_per_class
    local_sets = list(itertools.combinations(range(n), k))
    best = -math.inf
    for S in itertools.combinations(range(F), n):
        S = np.array(S)
        vals = np.array([[p.A[S[list(t)], c].sum() for t in local_sets] for c in range(C)])
        best_a = max(vals[np.arange(C), list(perm)].sum()
                     for perm in itertools.permutations(range(len(local_sets)), C))
        best = max(best, p.z_a_factor * best_a + p.z_r(S) + p.B[S].sum())
    return best


def _tiny_problem(seed: int, with_b: bool, with_r: bool, similar: bool) -> QPMProblem:
    rng = np.random.default_rng(seed)
    F, C = 9, 4
    if similar:  # near-identical classes: their top sets collide, uniqueness binds
        A = rng.normal(size=(F, 1)) + 0.05 * rng.normal(size=(F, C))
    else:
        A = rng.normal(size=(F, C))
    A /= np.abs(A).max()
    B = rng.normal(size=F) * 0.3 if with_b else None
    R = None
    if with_r:
        R = np.abs(rng.normal(size=(F, F)))
        R = (R + R.T) / 2
    return QPMProblem(A, B, R, n_features=4, n_per_class=2)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("with_b,with_r", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("similar", [False, True])
def test_solver_matches_exhaustive_optimum_on_tiny_instances(seed, with_b, with_r, similar):
    p = _tiny_problem(seed, with_b, with_r, similar)
    sol = solve_qpm(p, time_limit=20.0, seed=0, workers=2)
    check_solution(p, sol)
    opt = _exhaustive_optimum(p)
    assert sol.objective == pytest.approx(opt, abs=1e-7)
    assert sol.status == "optimal"
    assert sol.bound >= opt - 1e-9


def test_uniqueness_binds_on_similar_classes():
    """The 'similar' instances above really exercise uniqueness: unconstrained top sets collide."""
    p = _tiny_problem(0, False, False, True)
    sol = solve_qpm(p, time_limit=20.0, workers=2)
    top = np.sort(np.argsort(-p.A[sol.selected], axis=0)[:2].T, axis=1)
    assert len({tuple(t) for t in top}) < p.num_classes
    assert len({tuple(np.flatnonzero(r)) for r in sol.assignment}) == p.num_classes


def test_assign_classes_is_exact_under_collisions():
    rng = np.random.default_rng(0)
    for _ in range(60):
        m, k, C = int(rng.integers(3, 6)), 0, int(rng.integers(2, 5))
        k = int(rng.integers(1, m))
        sets = list(itertools.combinations(range(m), k))
        if C > len(sets):
            continue
        V = rng.normal(size=(m, 1)) + 0.2 * rng.normal(size=(m, C))
        brute = max(sum(V[list(sets[j]), c].sum() for c, j in enumerate(perm))
                    for perm in itertools.permutations(range(len(sets)), C))
        res = assign_classes(V, k)
        assert len({tuple(r) for r in res}) == C
        assert sum(V[res[c], c].sum() for c in range(C)) == pytest.approx(brute, abs=1e-12)


def test_swap_deltas_equal_recomputed_objective_change():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(25, 6))
    p = QPMProblem(A, rng.normal(size=25) * 0.1, n_features=5, n_per_class=2)

    def z_no_uniqueness(S):
        top = -np.sort(-A[S], axis=0)[:2]
        return p.z_a_factor * top.sum() + p.z_r(S) + p.B[S].sum()

    S = np.sort(rng.choice(25, 5, replace=False))
    in_s = np.zeros(25, dtype=bool)
    in_s[S] = True
    delta = _swap_deltas(p, S, in_s)
    for i in range(S.size):
        for g in np.flatnonzero(~in_s):
            S2 = np.concatenate([np.delete(S, i), [g]])
            assert delta[i, g] == pytest.approx(z_no_uniqueness(S2) - z_no_uniqueness(S), abs=1e-9)


def test_tau_clique_is_a_clique_below_tau_and_penalised_pairs_are_above():
    A, B = synthetic_statistics(96, 24, seed=1)
    p = QPMProblem(A, B, n_features=12, n_per_class=3)
    q = p.clique
    assert q.size == 12 and np.unique(q).size == 12
    assert np.all(p.R[np.ix_(q, q)] < p.tau)
    assert p.z_r(q) == 0.0
    iu = np.triu_indices(96, 1)
    assert np.all((p.penalty[iu] > 0) <= (p.R[iu] >= p.tau))
    given = QPMProblem(A, B, n_features=12, n_per_class=3, r_threshold=0.5)
    assert given.tau == 0.5 and given.clique is None


def _medium_problem():
    A, B = synthetic_statistics(160, 40, seed=2)  # C*F > full-model limit: LNS path
    return QPMProblem(A, B, n_features=12, n_per_class=3)


@pytest.fixture
def cpu_burners():
    """A busy-loop process owned by the test, beside the solve's two CP-SAT workers: more runnable threads than the
    2-core test machine has cores (and under pytest-xdist the other worker keeps the second core busy too)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_same_answer_under_cpu_load_at_default_effort(cpu_burners):
    """Same inputs + seed + effort -> the same assignment while the cores are busy: the search is measured in work
    units, all of the default effort is spent on a mid-size instance (LNS path). The wall-clock cap is set out of
    reach, so what the test asserts is work, never time (benchmarks/solver_effort.py measures the time)."""
    p = _medium_problem()
    a = solve_qpm(p, seed=3, workers=2, time_limit=3600.0)
    b = solve_qpm(p, seed=3, workers=2, time_limit=3600.0)
    assert all(proc.poll() is None for proc in cpu_burners)  # the load lasted through both solves
    for sol in (a, b):
        check_solution(p, sol)
        assert sol.effort == DEFAULT_EFFORT and sol.effort_used >= DEFAULT_EFFORT
    assert a.settings["search_rounds"] > 0
    np.testing.assert_array_equal(a.selected, b.selected)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    assert (a.objective, a.bound, a.effort_used) == (b.objective, b.bound, b.effort_used)


def test_answer_does_not_depend_on_the_number_of_workers():
    """CP-SAT's interleaved search with a fixed batch: 2, 3 or 4 workers give the same search."""
    p = _medium_problem()
    sols = [solve_qpm(p, effort=1.5, seed=1, workers=w) for w in (2, 3, 4)]
    for sol in sols[1:]:
        np.testing.assert_array_equal(sol.assignment, sols[0].assignment)
        np.testing.assert_array_equal(sol.selected, sols[0].selected)
        assert sol.effort_used == sols[0].effort_used


def test_wall_clock_cut_is_reported_in_solution_log_and_json(tmp_path, capsys):
    p = _medium_problem()
    sol = solve_qpm(p, effort=1e6, time_limit=2.0, workers=2, log=True)  # an effort no machine spends in 2 s
    check_solution(p, sol)
    assert sol.cut_by_wall_clock and sol.effort_used < sol.effort
    assert "WARNING" in sol.summary() and "may depend on machine load" in sol.summary()
    assert "WARNING: the time limit cut the search" in capsys.readouterr().out
    sol.save(tmp_path / "solution.json")
    saved = json.loads((tmp_path / "solution.json").read_text())
    assert saved["cut_by_wall_clock"] is True and saved["time_limit"] == 2.0 and saved["effort"] == 1e6


@pytest.mark.parametrize("effort,problem", [(0, "positive"), (-1.0, "positive"), (math.nan, "finite"),
                                            (math.inf, "finite"), ("10", "a number"), (True, "a number")])
def test_bad_effort_is_rejected_with_the_problem_named(effort, problem):
    with pytest.raises(ValueError, match=f"effort must be {problem}"):
        solve_qpm(_tiny_problem(0, False, False, False), effort=effort)


def _random_tiny_problem(seed: int, with_b: bool, with_r: bool) -> QPMProblem:
    rng = np.random.default_rng(100 + seed)
    F, C = int(rng.integers(5, 9)), int(rng.integers(2, 5))
    n, k = int(rng.integers(3, 5)), int(rng.integers(1, 3))
    while math.comb(n, k) < C:
        n += 1
    A = rng.normal(size=(F, 1)) * rng.uniform(0, 1) + rng.normal(size=(F, C))
    A /= np.abs(A).max()
    B = rng.normal(size=F) * 0.3 if with_b else None
    R = np.abs(rng.normal(size=(F, F))) if with_r else None
    return QPMProblem(A, B, R, n_features=n, n_per_class=k)


@pytest.mark.parametrize("with_b,with_r", [(False, False), (True, False), (False, True), (True, True)])
def test_lp_bound_is_never_below_the_exhaustive_optimum(with_b, with_r):
    """The bound of qpm_timm.solver.bound is valid: >= the true optimum on 4 x 6 random tiny instances,
    for the chosen multipliers and for random ones; and never above the cheap bound."""
    for seed in range(6):
        p = _random_tiny_problem(seed, with_b, with_r)
        opt = _exhaustive_optimum(p)
        bound, nu = lp_bound(p)
        assert bound >= opt - 1e-12
        assert bound <= p.upper_bound() * (1 + 1e-8)
        rng = np.random.default_rng(seed)
        for _ in range(5):
            assert lagrangian_bound(p, nu + rng.normal(size=nu.shape)) >= opt - 1e-12


def _lp_relaxation(p: QPMProblem) -> float:
    """The LP relaxation of the problem without Z_R and uniqueness, solved by GLOP."""
    F, C = p.A.shape
    lp = pywraplp.Solver.CreateSolver("GLOP")
    s = [lp.NumVar(0, 1, "") for _ in range(F)]
    W = [[lp.NumVar(0, 1, "") for _ in range(F)] for _ in range(C)]
    lp.Add(sum(s) == p.n_features)
    for c in range(C):
        lp.Add(sum(W[c]) == p.n_per_class)
        for f in range(F):
            lp.Add(W[c][f] <= s[f])
    lp.Maximize(sum(p.z_a_factor * p.A[f, c] * W[c][f] for c in range(C) for f in range(F))
                + sum(p.B[f] * s[f] for f in range(F)))
    assert lp.Solve() == pywraplp.Solver.OPTIMAL
    return lp.Objective().Value()


def test_lp_bound_reaches_the_lp_relaxation_and_beats_the_cheap_bound():
    A, B = synthetic_statistics(60, 12, seed=4)
    p = QPMProblem(A, B, n_features=8, n_per_class=3)
    lp = _lp_relaxation(p)
    bound, _ = lp_bound(p)
    assert lp - 1e-6 <= bound <= lp * (1 + 1e-4)
    sol = solve_qpm(p, effort=1.0, workers=1)
    assert sol.objective <= sol.bound <= bound
    assert p.upper_bound() - sol.objective > 5 * (bound - sol.objective)


def test_check_solution_rejects_violations():
    p = _tiny_problem(1, True, False, False)
    sol = solve_qpm(p, time_limit=10.0, workers=1)
    dup = QPMSolution(sol.selected, sol.assignment.copy(), sol.objective, sol.bound, sol.status, 0.0)
    dup.assignment[1] = dup.assignment[0]
    with pytest.raises(ValueError, match="share a feature set"):
        check_solution(p, dup)
    short = QPMSolution(sol.selected, sol.assignment.copy(), sol.objective, sol.bound, sol.status, 0.0)
    short.assignment[0] = False
    with pytest.raises(ValueError, match="exactly n_per_class"):
        check_solution(p, short)
    wrong = QPMSolution(sol.selected, sol.assignment, sol.objective + 1.0, sol.bound, sol.status, 0.0)
    with pytest.raises(ValueError, match="recomputed"):
        check_solution(p, wrong)
    few = QPMSolution(sol.selected[:-1], sol.assignment[:, :-1], sol.objective, sol.bound, sol.status, 0.0)
    with pytest.raises(ValueError, match="n_features"):
        check_solution(p, few)
    low = QPMSolution(sol.selected, sol.assignment, sol.objective, sol.objective - 1.0, sol.status, 0.0)
    with pytest.raises(ValueError, match="not a valid bound"):
        check_solution(p, low)


def test_json_round_trip_and_hash_mismatch(tmp_path):
    p = _tiny_problem(2, True, True, False)
    sol = solve_qpm(p, time_limit=10.0, workers=1)
    path = tmp_path / "solution.json"
    sol.save(path)
    back = QPMSolution.load(path, problem=p)
    np.testing.assert_array_equal(back.selected, sol.selected)
    np.testing.assert_array_equal(back.assignment, sol.assignment)
    assert back.objective == sol.objective and back.status == sol.status and back.bound == sol.bound
    assert back.settings["seed"] == 0 and back.input_hash == p.input_hash()
    assert (back.effort, back.effort_used, back.time_limit, back.cut_by_wall_clock, back.gap) == \
        (sol.effort, sol.effort_used, sol.time_limit, False, sol.gap)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    earlier = {k: v for k, v in json.loads(path.read_text()).items()
               if k not in ("gap", "effort", "effort_used", "time_limit", "cut_by_wall_clock")}
    path.write_text(json.dumps(earlier))  # a file written before these fields existed still loads
    old = QPMSolution.load(path, problem=p)
    assert old.effort is None and not old.cut_by_wall_clock and old.gap == sol.gap
    other = QPMProblem(p.A * 0.5, p.B, p.R, n_features=4, n_per_class=2)
    with pytest.raises(ValueError, match="different inputs"):
        QPMSolution.load(path, problem=other)


def test_log_true_prints_objective_bound_and_time(capsys):
    solve_qpm(_tiny_problem(0, False, False, False), time_limit=5.0, workers=1, log=True)
    out = capsys.readouterr().out
    assert "Z=" in out and "bound " in out and "gap" in out and "effort" in out and "s]" in out and "done:" in out
    solve_qpm(_tiny_problem(0, False, False, False), time_limit=5.0, workers=1, log=False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("arg", ["A", "B", "R"])
def test_nan_or_inf_inputs_are_rejected(arg):
    rng = np.random.default_rng(0)
    kw = {"A": rng.normal(size=(8, 3)), "B": rng.normal(size=8), "R": np.abs(rng.normal(size=(8, 8)))}
    kw[arg][0, ...] = np.nan if arg != "B" else np.inf
    with pytest.raises(ValueError, match=f"{arg} contains"):
        QPMProblem(kw["A"], kw["B"], kw["R"], n_features=4, n_per_class=2)


def test_shape_mismatches_are_rejected():
    A = np.random.default_rng(0).normal(size=(8, 3))
    with pytest.raises(ValueError, match="B must have shape"):
        QPMProblem(A, np.zeros(7), n_features=4, n_per_class=2)
    with pytest.raises(ValueError, match="R must have shape"):
        QPMProblem(A, None, np.zeros((8, 7)), n_features=4, n_per_class=2)
    with pytest.raises(ValueError, match="2-d"):
        QPMProblem(A[:, 0], n_features=4, n_per_class=2)


def test_too_many_features_is_rejected():
    with pytest.raises(ValueError, match="exceeds the number of features"):
        QPMProblem(np.ones((5, 2)), n_features=6, n_per_class=2)


def test_n_per_class_above_n_features_is_rejected():
    with pytest.raises(ValueError, match="n_per_class=5 exceeds n_features=4"):
        QPMProblem(np.ones((8, 2)), n_features=4, n_per_class=5)


def test_more_classes_than_distinct_sets_is_rejected():
    with pytest.raises(ValueError, match=r"binomial\(4, 2\) = 6"):
        QPMProblem(np.random.default_rng(0).normal(size=(8, 7)), n_features=4, n_per_class=2)


def test_time_limit_too_short_for_any_feasible_solution_raises():
    A, B = synthetic_statistics(256, 64, seed=0)
    p = QPMProblem(A, B, n_features=20, n_per_class=4)
    with pytest.raises(ValueError, match="before a feasible solution was found"):
        solve_qpm(p, time_limit=1e-9)
    with pytest.raises(ValueError, match="time_limit must be positive"):
        solve_qpm(p, time_limit=0)

"""Certify mode (qpm_timm/solver/certify.py): its bound is valid and closes on tiny instances, with and without
forced pairs; it is deterministic by work units and resumes where it stopped; solve_qpm(certify=True) and
``python -m qpm_timm.solver certify`` report it."""
import numpy as np
import pytest
from test_setbound import _exhaustive, _tiny

from qpm_timm.solver import QPMProblem, check_solution, solve_qpm
from qpm_timm.solver.__main__ import main
from qpm_timm.solver.certify import certify
from qpm_timm.solver.heuristic import evaluate_selection, greedy_selection
from qpm_timm.solver.synthetic import synthetic_statistics
from qpm_timm.stats import QPMStatistics


def _greedy(p: QPMProblem):
    S = greedy_selection(p)
    return S, evaluate_selection(p, S)[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_certify_closes_the_gap_to_the_exhaustive_optimum(seed):
    """From a greedy incumbent, the branch and bound ends with incumbent = bound = the true optimum."""
    p = _tiny(seed)
    res = certify(p, *_greedy(p), target_gap=0.0, effort=1e4, candidates=4)
    opt = _exhaustive(p)
    assert res.proven and res.open_nodes == 0
    assert res.objective == pytest.approx(opt, abs=1e-9)
    assert res.bound >= opt - 1e-9


def test_certify_with_forced_pairs_bounds_their_optimum():
    p = _tiny(3, pairs=[(0, 1), (1, 2)])
    sol = solve_qpm(p, effort=2.0, workers=1)
    res = certify(p, sol.selected, sol.assignment, target_gap=0.0, effort=1e4, candidates=4)
    opt = _exhaustive(p)
    assert res.bound >= opt - 1e-9
    assert res.objective == pytest.approx(sol.objective)


def _small() -> QPMProblem:
    A, B = synthetic_statistics(40, 10, seed=2)
    return QPMProblem(A, B, n_features=6, n_per_class=2)


def test_certify_is_deterministic_and_resumes_where_it_stopped(tmp_path):
    p = _small()
    S, W = _greedy(p)
    whole = certify(p, S, W, target_gap=0.0, effort=0.3, candidates=5)
    state = str(tmp_path / "certify.json")
    first = certify(p, S, W, target_gap=0.0, effort=0.15, candidates=5, state_path=state)
    rest = certify(p, S, W, target_gap=0.0, effort=0.3, candidates=5, state_path=state)
    assert first.nodes < rest.nodes
    assert (rest.nodes, rest.bound, rest.objective) == (whole.nodes, whole.bound, whole.objective)
    assert whole.bound <= whole.root_bound


def test_wall_clock_cap_cuts_and_says_so():
    p = _small()
    res = certify(p, *_greedy(p), target_gap=0.0, effort=1e4, candidates=5, time_limit=1e-9)
    assert res.cut_by_wall_clock and res.nodes == 0 and res.bound >= res.objective


def test_solve_qpm_certify_keeps_the_lower_bound_and_says_what_it_proved():
    p = _small()
    plain = solve_qpm(p, effort=1.0, workers=1)
    cert = solve_qpm(p, effort=1.0, workers=1, certify=True, certify_effort=2.0, certify_gap=0.0)
    check_solution(p, cert)
    assert cert.objective >= plain.objective - 1e-12
    assert cert.bound <= plain.bound
    info = cert.settings["certify"]
    assert info["nodes"] > 0 and info["bound"] >= cert.objective - 1e-9


def test_certify_command_prints_incumbent_bound_gap_and_curve(tmp_path, capsys):
    A, B = synthetic_statistics(40, 10, seed=2)
    F, C = A.shape
    stats = QPMStatistics(A=A, B=B, mean=np.zeros(F), std=np.ones(F), locality=np.zeros(F), edge=np.zeros(F),
                          class_counts=np.full(C, 30), num_images=300)
    path = tmp_path / "statistics.npz"
    stats.save(path)
    rc = main(["certify", str(path), "--n-features", "6", "--n-per-class", "2", "--effort", "1",
               "--certify-effort", "0.3", "--gap", "0.0", "--candidates", "5", "--workers", "1"])
    out = capsys.readouterr().out
    assert rc in (0, 1)
    assert "incumbent: Z =" in out and "certified: Z =" in out and "curve" in out

"""Editing a trained QPM (qpm_timm/edit.py; docs/METHOD.md, "Editing"): forbidden and required features re-solved on
the run's statistics, every QPM constraint kept, the export recording the edit, impossible edits refused."""
import contextlib
import io
import itertools
import json
import shutil

import numpy as np
import pytest
import timm
import torch
import yaml

from qpm_timm.edit import EditImpossible, edit_from_features, edit_model, solve_edit
from qpm_timm.models.head import check_assignment
from qpm_timm.run.editing import main
from qpm_timm.solver import QPMProblem
from qpm_timm.stats import QPMStatistics

EFFORT = '2'  # the embedded default's own solver effort (qpm_timm/configs/concepts.yaml)


@pytest.fixture(scope='module')
def embedded(embedded_default):
    """The embedded default's QPM, its statistics and its report's feature records."""
    model = timm.create_model(f'local-dir:{embedded_default.export}', pretrained=True).eval()
    statistics = QPMStatistics.load(embedded_default.folder / 'statistics.npz')
    features = json.loads((embedded_default.export / 'report' / 'report.json').read_text())['features']
    return model, statistics, features


def test_forbidding_a_concepts_feature_drops_it_and_changes_only_the_classes_that_used_it(embedded):
    model, statistics, features = embedded
    j = next(i for i, f in enumerate(features) if f['annotation'])  # a feature matched to a planted concept
    selection, W = model.head.selection.tolist(), model.class_weights.numpy() > 0
    result = edit_model(model, statistics, edit_from_features(model, forbid_features=[j]), effort=float(EFFORT))
    channel = selection[j]
    assert channel not in result.selection.tolist() and result.changes.dropped == [channel]
    assert {c for c, _, _ in result.changes.classes} == set(np.flatnonzero(W[:, j]).tolist())
    for c, before, after in result.changes.classes:
        assert channel in before and channel not in after and len(set(before) & set(after)) >= len(before) - 1
    check_assignment(torch.as_tensor(result.assignment), model.num_classes, model.n_features, model.n_per_class)
    assert result.model.head.selection.tolist() == result.selection.tolist()
    assert np.array_equal(result.model.class_weights.numpy() > 0, result.assignment)
    assert result.objective <= result.bound and not result.solution.cut_by_wall_clock
    assert result.solution.effort == float(EFFORT)  # the edit's small work budget, not a fresh solve's
    assert model.head.selection.tolist() == selection  # the input model is left as it was


def test_resolve_all_re_solves_every_class_and_still_keeps_the_edit(embedded):
    model, statistics, features = embedded
    j = next(i for i, f in enumerate(features) if f['annotation'])
    channel = model.head.selection.tolist()[j]
    edit = edit_from_features(model, forbid_features=[j])
    local = edit_model(model, statistics, edit, effort=float(EFFORT))
    free = edit_model(model, statistics, edit, effort=float(EFFORT), keep_others=False)
    assert channel not in free.selection.tolist()
    check_assignment(torch.as_tensor(free.assignment), model.num_classes, model.n_features, model.n_per_class)
    # the local edit is one of the solutions the free re-solve may pick: the free one is at least as good on Z
    # unless its search stopped short, which the effort of the embedded default's solve does not
    assert free.objective >= local.objective - 1e-9


def test_cli_require_exports_a_model_whose_card_and_files_record_the_edit(embedded_default, embedded, tmp_path,
                                                                         capsys):
    model, _, _ = embedded
    W = model.class_weights.numpy() > 0
    c, j = 0, int(np.flatnonzero(~W[0])[0])  # a feature class 0 does not use
    channel = model.head.selection.tolist()[j]
    out = tmp_path / 'edited'
    assert main([str(embedded_default.folder), '--require', f'{c}:f{j}', '--output', str(out), '--with-statistics',
                 '--effort', EFFORT]) == 0
    assert '| class | before | after |' in capsys.readouterr().out
    edited = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    kept = edited.head.selection.tolist()
    assert channel in kept and edited.class_weights[c, kept.index(channel)] == 1
    card = (out / 'README.md').read_text()
    size = (embedded_default.folder / 'statistics.npz').stat().st_size
    assert '## Edit' in card and f'uses ch {channel}' in card and f'`statistics.npz` ({size / 1e6:.2f} MB)' in card
    assert (out / 'statistics.npz').read_bytes() == (embedded_default.folder / 'statistics.npz').read_bytes()
    record = json.loads((out / 'edit.json').read_text())
    assert record['edit']['require_pairs'] == [[c, channel]] and 'finetune' not in record
    assert record['statistics_bytes'] == size and record['bound'] >= record['objective']
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in edited.state_dict().items()
               if k.startswith('backbone.'))  # not fine-tuned: the backbone is the run's

    # the export carries what editing needs: edited again, it keeps the earlier requirement
    again = tmp_path / 'again'
    other = int(np.flatnonzero(~W[1])[-1])
    assert main([str(out), '--forbid', f'1:ch{model.head.selection.tolist()[other]}', '--output', str(again),
                 '--effort', EFFORT]) == 0
    assert 'keeping the constraints of the edit' in capsys.readouterr().out
    twice = json.loads((again / 'edit.json').read_text())['edit']
    assert [c, channel] in twice['require_pairs'] and len(twice['forbid_pairs']) == 1


def test_finetune_epochs_trains_the_backbone_with_the_edited_head_frozen(embedded_default, embedded, tmp_path, capsys):
    """The run's stage 4 on the edited model; the run's data shrunk to 2 images per class to keep the test short."""
    model, _, _ = embedded
    run = tmp_path / 'run'
    run.mkdir()
    shutil.copytree(embedded_default.export, run / 'export')
    shutil.copy(embedded_default.folder / 'statistics.npz', run)
    args = yaml.safe_load((embedded_default.folder / 'args.yaml').read_text())
    (run / 'args.yaml').write_text(yaml.safe_dump(dict(args, dataset_args={'images_per_class': 2})))
    out = tmp_path / 'tuned'
    assert main([str(run), '--forbid-feature', '0', '--output', str(out), '--finetune-epochs', '1',
                 '--effort', EFFORT]) == 0
    assert 'fine-tuned 1 epochs: validation top-1' in capsys.readouterr().out
    tuned = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    record = json.loads((out / 'edit.json').read_text())
    assert record['finetune']['epochs'] == 1 and tuned.head.selection.tolist() == record['selection']
    key = 'backbone.conv1.0.weight'
    assert not torch.equal(tuned.state_dict()[key], model.state_dict()[key])


@pytest.mark.parametrize('args, message', [
    (['--forbid', '0:f1', '--require', '0:f1'], 'contradictory edit'),
    (['--forbid-feature', 'f1', '--require', '2:f1'], 'contradictory edit'),
    (['--require', '0:f0', '0:f1', '0:f2', '0:f3'], 'every class uses exactly n_wc = 3'),
    (['--forbid-feature', 'f99'], 'does not exist'),
    (['--forbid', 'no_such_class:f0'], 'does not exist'),
    (['--forbid-feature', 'no_such_concept'], 'is no feature'),
    ([], 'nothing to edit'),
])
def test_contradictory_or_impossible_edit_exits_2_and_writes_nothing(embedded_default, tmp_path, args, message):
    out = tmp_path / 'edited'
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(embedded_default.folder), *args, '--output', str(out)])
    assert code == 2 and message in err.getvalue()
    assert not out.exists()


def test_folders_without_statistics_or_an_existing_output_exit_2(embedded_default, tmp_path):
    (tmp_path / 'taken').mkdir()
    (tmp_path / 'taken' / 'model.safetensors').write_text('earlier result')
    for folder, out, message in ((embedded_default.export, tmp_path / 'o', 'holds no model with its statistics'),
                                 (embedded_default.folder, tmp_path / 'taken', 'already exists')):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main([str(folder), '--forbid-feature', '0', '--output', str(out)]) == 2
        assert message in err.getvalue()
    assert (tmp_path / 'taken' / 'model.safetensors').read_text() == 'earlier result' and not (tmp_path / 'o').exists()


def test_edits_no_qpm_satisfies_are_refused_with_the_reason():
    rng = np.random.default_rng(0)
    problem = QPMProblem(rng.uniform(-1, 1, (12, 6)), n_features=5, n_per_class=2, r_threshold=0.5)
    current = np.arange(5)
    cases = [(dict(forbid_features=range(8)), 'only 4 features remain'),
             (dict(require=[(0, 1), (0, 2), (0, 3)]), 'exactly n_wc = 2'),
             (dict(require=[(0, 1), (0, 2), (3, 1), (3, 2)]), 'classes 0 and 3 are both required to use the same'),
             (dict(require=[(c, 2 * c + i) for c in range(3) for i in range(2)]), '6 different features are required'),
             (dict(forbid_features=[4], require=[(2, 4)]), 'required but its feature is forbidden'),
             (dict(forbid=[(5, f) for f in range(11)]), 'class 5 has fewer than n_wc = 2 features left')]
    for kwargs, message in cases:
        with pytest.raises(EditImpossible, match=message):
            solve_edit(problem, current, **kwargs)


def _best_keeping(problem, forbid, require):
    """The best Z of all QPM solutions that keep the edit, by enumeration (a tiny problem)."""
    n, k, C = problem.n_features, problem.n_per_class, problem.num_classes
    best = -np.inf
    for S in itertools.combinations(range(problem.num_all_features), n):
        sets = list(itertools.combinations(S, k))
        for choice in itertools.permutations(sets, C):
            pairs = {(c, f) for c, t in enumerate(choice) for f in t}
            if pairs & set(forbid) or not set(require) <= pairs:
                continue
            W = np.array([[f in t for f in S] for t in choice])
            best = max(best, problem.objective(np.array(S), W))
    return best


def test_the_re_solve_finds_the_best_qpm_that_keeps_the_edit_under_a_valid_bound():
    rng = np.random.default_rng(1)
    problem = QPMProblem(rng.uniform(-1, 1, (7, 3)), rng.uniform(-0.3, 0.3, 7), n_features=4, n_per_class=2)
    free = solve_edit(problem, np.arange(4), effort=0.5, seed=0, workers=1)
    used = [(c, int(free.selected[j])) for c, j in zip(*np.nonzero(free.assignment))]
    outside = int(np.setdiff1d(np.arange(7), free.selected)[0])
    forbid, require = [used[0]], [(2, outside)]  # forbid a pair the free optimum uses, require a feature it drops
    edited = solve_edit(problem, free.selected, forbid=forbid, require=require, effort=0.5, seed=0, workers=1)
    pairs = {(c, int(edited.selected[j])) for c, j in zip(*np.nonzero(edited.assignment))}
    assert used[0] not in pairs and (2, outside) in pairs
    best = _best_keeping(problem, forbid, require)
    assert edited.objective == pytest.approx(best) and edited.bound >= best - 1e-9
    assert edited.objective < free.objective  # the edit costs Z: the free optimum broke it


def test_restricted_problem_scores_selections_inside_it_as_the_full_problem_does():
    rng = np.random.default_rng(2)
    problem = QPMProblem(rng.uniform(-1, 1, (15, 6)), rng.uniform(-0.3, 0.3, 15), n_features=4, n_per_class=2,
                         r_threshold=0.0)
    R = np.where(problem.R > 0, problem.R, np.nan)
    extremes = {np.unravel_index(np.nanargmax(R), R.shape)[0], np.unravel_index(np.nanargmin(R), R.shape)[0]}
    keep = np.setdiff1d(np.arange(15), list(extremes))  # without them, R-tilde re-derived would be scaled otherwise
    sub = problem.restricted(keep)
    naive = QPMProblem(problem.A[keep], problem.B[keep], problem.R[np.ix_(keep, keep)], n_features=4, n_per_class=2,
                       r_threshold=0.0)
    W = np.zeros((6, 4), dtype=bool)
    W[np.arange(6), np.arange(6) % 4] = W[np.arange(6), (np.arange(6) + 1 + np.arange(6) // 4) % 4] = True
    for S in ([0, 1, 2, 3], [2, 3, 5, 6], [0, 4, 5, 9]):
        assert sub.objective(np.array(S), W) == pytest.approx(problem.objective(keep[S], W))
    assert naive.objective(np.array([0, 1, 2, 3]), W) != pytest.approx(sub.objective(np.array([0, 1, 2, 3]), W))
    with pytest.raises(ValueError, match='sorted distinct'):
        problem.restricted([3, 2])

"""CHiQPM's prediction sets and trees (docs/METHOD.md, "CHiQPM prediction sets and trees"): the scores follow the
paths, the calibration is the textbook split-conformal one, the coverage guarantee holds over random splits of a
trained model's validation set for every target and method, the calibration travels with the export, the tree's
JSON is the assignment, and bad calibration input is refused."""
import math
import re

import numpy as np
import pytest
import timm
import torch

import qpm_timm
from helpers.scripts import ROOT, read_results, refused, run_script
from qpm_timm import hub
from qpm_timm.conformal import (
    DEFAULT_TARGETS,
    METHODS,
    SetInputs,
    calibrate,
    calibration_split,
    class_members,
    coverage_over_splits,
    hierarchical_scores,
    jaccard_similarity,
    load_calibration,
    predict_sets,
    prediction_tree,
    set_coherence,
    set_inputs,
)
from qpm_timm.conformal.tree import tree_json
from qpm_timm.data import create_qpm_loader, create_qpm_split
from qpm_timm.run import evaluate

FAST = ['--no-interpretability', '--workers', '0', '-b', '200', '--no-progress']
# 4 classes x 2 of 4 features: a = {0, 1}, b = {0, 2}, c = {1, 3}, d = {2, 3}
W = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]])


def _inputs(features, labels=None):
    features = np.asarray(features, dtype=np.float64)
    return SetInputs(features @ W.T, features, None if labels is None else np.asarray(labels))


def test_scores_follow_the_predictions_path_feature_by_feature():
    # activations f0 = 3, f1 = 1, f2 = 2, f3 = 0: paths a = (0, 1), b = (0, 2) [predicted, 5], c = (1, 3), d = (2, 3)
    inputs = _inputs([[3., 1., 2., 0.]])
    assert inputs.predictions[0] == 1
    depth0, depth1, depth2 = (hierarchical_scores(inputs, class_members(W), n)[0] for n in range(3))
    # depth 0: every class; -(own activation where it leaves b's path + activations shared with b's path)
    assert depth0.tolist() == [-(1 + 3), -(3 + 2), -1, -2]
    # depth 1: only classes starting with f0 (a, b); shared activations deeper than depth 1 only
    assert depth1.tolist() == [-1, -2, math.inf, math.inf]
    assert depth2.tolist() == [math.inf, 0.0, math.inf, math.inf]  # only the prediction shares both features


def test_calibration_takes_the_textbook_order_statistic_at_the_deepest_level_that_reaches_it():
    rng = np.random.default_rng(0)
    features = rng.random((40, 4))
    labels = np.concatenate([np.arange(4), rng.integers(0, 4, 36)])
    inputs = _inputs(features, labels)
    cal = calibrate(inputs, W, [0.5, 0.9])
    for target, level, threshold in zip(cal.targets, cal.levels, cal.thresholds):
        rank = math.ceil(41 * target)  # ceil((N + 1)(1 - alpha)), not torchcp 0.1.3's ceil(N + 1)(1 - alpha) / N
        assert cal.level_accuracy[level] * 40 >= rank and (level == 2 or cal.level_accuracy[level + 1] * 40 < rank)
        true = hierarchical_scores(inputs, class_members(W), level)[np.arange(40), labels]
        assert threshold == np.sort(true)[rank - 1]
        assert predict_sets(cal, inputs, W, target)[np.arange(40), labels].sum() >= rank  # in-sample coverage


@pytest.mark.parametrize('labels,targets,message', [
    ([0, 1, 2, 0, 1, 2], [0.9], 'no image of 1 of the 4 classes (first: [3])'),
    ([0, 1, 2, 3] * 3, [1.0], 'outside (0, 1)'),
    ([0, 1, 2, 3] * 3, [0.0], 'outside (0, 1)'),
    ([0, 1, 2, 3], [0.9], '4 calibration images cannot calibrate coverage 0.9: it needs at least 9'),
])
def test_bad_calibration_input_is_refused_with_what_to_do(labels, targets, message):
    inputs = _inputs(np.ones((len(labels), 4)), labels)
    with pytest.raises(ValueError, match=re.escape(message)):
        calibrate(inputs, W, targets)


def test_tree_json_is_the_assignment_ordered_by_activation_with_the_set_highlighted():
    rng = np.random.default_rng(1)
    weights = qpm_timm.models.head.placeholder_assignment(30, 7, 3).numpy()
    for _ in range(5):
        features = rng.random(7)
        prediction = int(np.argmax(features @ weights.T))
        members = [prediction, int(rng.integers(30))]
        for local in (False, True):
            tree = tree_json(prediction_tree(features, weights, prediction, members, local=local))
            first = max(np.flatnonzero(weights[prediction]), key=lambda f: (features[f], -f))
            kept = [c for c in range(30) if max(np.flatnonzero(weights[c]), key=lambda f: (features[f], -f)) == first]
            assert sorted(map(int, tree['class_paths'])) == (kept if local else list(range(30)))
            for c, path in tree['class_paths'].items():
                assert sorted(path) == np.flatnonzero(weights[int(c)]).tolist()  # exactly the class's features
                assert features[path].tolist() == sorted(features[path], reverse=True)  # strongest first
            nodes = {n['id']: n for n in tree['nodes']}
            for c in map(int, tree['class_paths']):
                assert nodes[f'c:{c}']['highlight'] == (c in members)
            edges = {child: parent for parent, child in tree['edges']}
            assert len(edges) == len(nodes) - 1 and set(edges.values()) <= set(nodes)  # a tree: one parent each


@pytest.fixture(scope='module')
def embedded(embedded_default):
    """The embedded default's export and its validation pass (pooled features and labels, computed once)."""
    model = timm.create_model(f'local-dir:{embedded_default.export}', pretrained=True).eval()
    val = create_qpm_split('concepts', None, 'val', transform_size=model.pretrained_cfg['input_size'][-1])
    evaluation = evaluate(model, create_qpm_loader(val, 200), 'cpu', keep_features=True)
    return model, val, set_inputs(model, evaluation.pooled, evaluation.labels), evaluation.pooled, embedded_default


@pytest.mark.parametrize('noise', [0.0, 2.0])
def test_coverage_guarantee_holds_over_20_random_splits_for_every_target_and_method(embedded, noise):
    """The embedded default (99.5 % top-1: the sets are nearly single classes) and the same model with Gaussian
    noise of ``noise`` x each feature's std added to its pooled features (a weak classifier: CHiQPM's sets leave the
    leaf and its level is calibrated). Both give exchangeable images, so the guarantee must hold."""
    model, val, inputs, pooled = embedded[:4]
    if noise:
        pooled = pooled + noise * model.head.std * torch.randn(pooled.shape, generator=torch.Generator().manual_seed(0))
        inputs = set_inputs(model, pooled, inputs.labels)
        assert 0.3 < (inputs.predictions == inputs.labels).mean() < 0.8
    results = coverage_over_splits(inputs, model.class_weights.detach().cpu(), DEFAULT_TARGETS, splits=20,
                                   similarity=jaccard_similarity(val.class_concepts))
    for method in METHODS:
        for target, m in results[method].items():
            assert m['coverage'] >= target - m['slack'], (method, target, m)
    chiqpm = [results['chiqpm'][t] for t in DEFAULT_TARGETS]
    assert [m['size'] for m in chiqpm] == sorted(m['size'] for m in chiqpm)  # larger sets for higher targets
    if noise:
        assert all(m['coverage'] < t + 0.02 and m['size'] > 2 for m, t in zip(chiqpm, DEFAULT_TARGETS))  # not trivial


def test_set_coherence_pools_the_class_pairs_of_every_set_of_two_or_more():
    similarity = np.array([[1., .5, 0.], [.5, 1., .2], [0., .2, 1.]])
    sets = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=bool)  # the singleton adds no pair
    assert set_coherence(sets, similarity) == pytest.approx((2 * .5 + 2 * (.5 + 0 + .2)) / (2 + 6))
    assert np.isnan(set_coherence(np.eye(3, dtype=bool), similarity))


def test_exported_calibration_gives_the_same_sets_after_loading_and_fits_only_its_assignment(embedded, tmp_path):
    model, _, inputs = embedded[:3]
    weights = model.class_weights.detach().cpu()
    cal_index, test_index = calibration_split(inputs.labels, seed=3)
    calibration = calibrate(inputs.subset(cal_index), weights)
    hub.save_pretrained(model, tmp_path / 'export', calibration_json=calibration.to_json())
    loaded = timm.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True).eval()
    restored = load_calibration(loaded)
    assert restored == calibration
    assert 'prediction_sets.json' in hub.push_to_hub(tmp_path / 'export', 'org/name', dry_run=True).files
    readme = (ROOT / 'docs' / 'PREDICTION_SETS.md').read_text(encoding='utf-8')
    code = readme.split('```python\n', 1)[1].split('```', 1)[0]
    namespace = {}
    exec(code.replace('output/train/qpm_resnet10t-concepts/export', str(tmp_path / 'export')), namespace)
    assert namespace['sets'].shape == (2, model.num_classes) and namespace['sets'].dtype == bool  # as written
    val = embedded[1]  # at the export's input side
    images = torch.stack([val[i][0] for i in test_index[:32]])
    with torch.no_grad():
        pooled = loaded.forward_with_features(images).pooled
    for target in calibration.targets:
        assert np.array_equal(predict_sets(restored, set_inputs(loaded, pooled), loaded.class_weights.detach().cpu(),
                                           target),
                              predict_sets(calibration, inputs.subset(test_index[:32]), weights, target))
    other = torch.as_tensor(np.roll(weights.numpy(), 1, axis=0))
    with pytest.raises(ValueError, match='another class x feature assignment'):
        predict_sets(restored, inputs, other, 0.9)


def test_validate_reports_coverage_size_and_coherence_per_target_for_all_three_methods(embedded, tmp_path):
    run = embedded[4]
    out = tmp_path / 'v.json'
    assert run_script('validate.py', ['--model', f'local-dir:{run.export}', '--pretrained', *FAST,
                                      '--prediction-sets', '--results-file', out]) == 0
    results = read_results(out)
    for prefix in ('', 'aps_', 'lac_'):
        for target in DEFAULT_TARGETS:
            assert {f'{prefix}coverage@{target:g}', f'{prefix}set_size@{target:g}'} <= set(results)
    assert 0 < results['aps_set_coherence@0.95'] < 1  # the mean Jaccard index of the planted concept sets


@pytest.mark.parametrize('argv,message', [
    (['--set-targets', '0.9', '1.5'], 'coverage target 1.5 (alpha = 1 - target = -0.5) is outside (0, 1)'),
    (['--calibration-per-class', '25'], 'class 0 has 25 images, 25 calibration images per class leave none'),
])
def test_validate_refuses_bad_calibration_input_with_exit_code_2(embedded, tmp_path, argv, message):
    run = embedded[4]
    out = tmp_path / 'v.json'
    code, err = refused('validate.py', ['--model', f'local-dir:{run.export}', '--pretrained', *FAST,
                                        '--prediction-sets', '--results-file', out, *argv])
    assert code == 2 and message in err and not out.exists()

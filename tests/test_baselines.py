"""The baselines' sparse layers are what their definitions say (docs/METHOD.md, "Baselines"): glm-saga's path point
near n_wc per class, SLDD-Model's cut to n_wc * C with the path's bias, Q-SENN's three values and count bias; bad
sizes are refused naming them; glm-saga is the [baselines] extra and prints nothing."""
import builtins
import math

import numpy as np
import pytest
import torch

from qpm_timm.baselines import (
    ELASTIC_NET,
    GROUP_SELECTION,
    PathPoint,
    PooledFeatures,
    SparseLayer,
    count_bias,
    fit_glm,
    fit_qsenn_round,
    fit_sldd,
    fit_split,
    import_glm_saga,
    keep_largest,
    normalised,
    quantise,
    regularization_path,
    select_from_features,
    sparsest_enough,
)

C, F, PER_CLASS = 6, 16, 2
FAST = ELASTIC_NET.replace(k=25, max_epochs=30, batch_size=64)
FAST_GROUP = GROUP_SELECTION.replace(k=25, max_epochs=30, batch_size=64)


@pytest.fixture(scope='module')
def features() -> PooledFeatures:
    """Pooled features of 6 classes: features 0-5 fire for their own class, 6-15 are noise."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(C), 40)
    x = rng.normal(0.0, 0.3, (len(labels), F)).clip(min=0)
    x[np.arange(len(labels)), labels] += 2.0 + rng.normal(0, 0.2, len(labels))
    return PooledFeatures(x, labels)


def _fit_tensors(features: PooledFeatures, channels=None):
    mean, std = features.mean_std()
    fit, _ = fit_split(len(features.labels), 0)
    pooled = features.pooled[fit] if channels is None else features.pooled[fit][:, channels]
    if channels is not None:
        mean, std = mean[channels], std[channels]
    return normalised(pooled, mean, std), torch.as_tensor(features.labels[fit])


def test_glm_layer_is_the_walked_path_point_closest_to_n_wc_per_class(features):
    layer = fit_glm(features, C, PER_CLASS, settings=FAST)
    x, y = _fit_tensors(features)
    points = regularization_path(x, y, C, FAST, stop=lambda p: p.nonzeros_per_class > PER_CLASS)
    best = min((p for p in points if p.nonzeros), key=lambda p: (abs(p.nonzeros_per_class - PER_CLASS),
                                                                 p.nonzeros_per_class))
    assert layer.info['point'] == best.index
    assert layer.nonzeros_per_class == pytest.approx(best.nonzeros_per_class)
    assert abs(layer.nonzeros_per_class - PER_CLASS) <= 1
    # the head reads exactly the features the point uses, with the point's weights and bias
    assert layer.channels.tolist() == best.used_features.tolist()
    assert np.allclose(layer.weight, best.weight[:, layer.channels].numpy())
    assert np.allclose(layer.bias, best.bias.numpy()) and np.abs(layer.bias).max() > 0
    assert layer.features_used == len(layer.channels)


def test_sldd_cuts_the_densest_point_within_twice_n_wc_to_n_wc_times_c_weights_and_keeps_its_bias(features):
    layer = fit_sldd(features, C, 8, PER_CLASS, selection_settings=FAST_GROUP, path_settings=FAST)
    assert layer.kind == 'sldd' and len(layer.channels) == 8
    assert layer.info['point_nonzeros_per_class'] <= 2 * PER_CLASS
    assert layer.nonzeros == min(PER_CLASS * C, round(layer.info['point_nonzeros_per_class'] * C))
    assert layer.nonzeros_per_class <= PER_CLASS
    assert np.abs(layer.bias).max() > 0  # the path point's bias
    mean, std = features.mean_std()
    assert np.allclose(layer.mean, mean[layer.channels]) and np.allclose(layer.std, std[layer.channels])
    # the planted features are the ones selected first
    assert set(range(C)) <= set(layer.channels.tolist())


def test_the_group_path_admits_features_in_the_order_their_columns_enter(features):
    chosen, info = select_from_features(features, C, 4, settings=FAST_GROUP)
    assert len(chosen) == 4 and chosen.tolist() == sorted(info['entry_order'])
    assert set(info['entry_order']) <= set(range(C))  # planted features enter before noise


def test_qsenn_weights_take_exactly_three_values_and_about_n_wc_times_c_are_nonzero(features):
    channels = np.arange(8)
    layer = fit_qsenn_round(features.restricted(channels), channels, C, PER_CLASS, settings=FAST)
    values = np.unique(layer.weight)
    a = layer.info['a']
    assert values.tolist() == pytest.approx([-a, 0.0, a])
    assert layer.nonzeros == PER_CLASS * C  # no ties at the threshold here: exactly n_wc * C
    w = torch.as_tensor(layer.weight)
    assert torch.equal(torch.as_tensor(layer.bias), count_bias(w, float(np.abs(layer.bias).max())))


def test_quantise_thresholds_at_the_midpoint_and_maps_to_the_mean_magnitude_with_signs():
    w = torch.tensor([[3.0, -1.0, 0.0], [-4.0, 0.5, 2.0]])
    q, a, threshold = quantise(w, 3)
    assert threshold == pytest.approx(1.5)  # between the 3rd (2.0) and 4th (1.0) largest |w|
    assert a == pytest.approx(3.0)  # mean of 3, 4, 2
    assert q.tolist() == [[3.0, 0.0, 0.0], [-3.0, 0.0, 3.0]]  # the largest |w| is negative and stays negative
    q, _, _ = quantise(w, 10)  # fewer nonzeros than asked: all of them
    assert int((q != 0).sum()) == 5


def test_count_bias_spans_the_largest_bias_and_equal_counts_give_zero_not_a_division_by_zero():
    w = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # counts 2, 0, 1
    assert count_bias(w, 0.8).tolist() == pytest.approx([-0.8, 0.8, 0.0])
    equal = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert count_bias(equal, 0.8).tolist() == [0.0, 0.0]


def test_keep_largest_zeroes_all_but_the_largest_magnitudes():
    w = torch.tensor([[0.125, -0.875, 0.0], [0.5, 0.25, -0.375]])
    assert keep_largest(w, 2).tolist() == [[0.0, -0.875, 0.0], [0.5, 0.0, 0.0]]
    assert torch.equal(keep_largest(w, 10), w)


def test_a_path_without_a_point_that_sparse_is_refused_naming_the_sizes():
    dense = PathPoint(1, 0.1, torch.ones(3, 4), torch.zeros(3))
    empty = PathPoint(0, 1.0, torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match=r'no point with between 0 and 2 nonzero weights per class \(its first '
                                         r'non-empty point has 4\.00\); raise --n-per-class'):
        sparsest_enough([empty, dense], 2, 'SLDD-Model')
    assert sparsest_enough([empty, dense], 4, 'x') is dense


def test_a_selection_above_the_backbone_channels_names_the_sizes(features):
    with pytest.raises(ValueError, match=f'n_features=40 of the backbone\'s {F} feature channels; choose '
                                         f'--n-features between 1 and {F}'):
        fit_sldd(features, C, 40, PER_CLASS)


def test_a_fitting_split_without_some_class_is_refused():
    x, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match=r'no image of classes \[1\]'):
        regularization_path(x, y, 2, FAST)


def test_the_path_prints_nothing_and_walks_from_the_largest_penalty_down(features, capsys):
    x, y = _fit_tensors(features)
    points = regularization_path(x, y, C, FAST.replace(k=5))
    assert capsys.readouterr().out == ''
    lams = [p.lam for p in points]
    assert lams == sorted(lams, reverse=True) and len(points) == 5
    assert lams[-1] == pytest.approx(lams[0] * FAST.epsilon)
    assert points[0].nonzeros < points[-1].nonzeros  # from (nearly) empty at lambda_max to dense


def test_the_split_is_seeded_ninety_ten():
    fit, held = fit_split(100, 3)
    assert len(fit) == 90 and len(held) == 10 and not set(fit) & set(held)
    assert fit.tolist() == fit_split(100, 3)[0].tolist() != fit_split(100, 4)[0].tolist()


def test_a_layer_file_reads_back_as_written(tmp_path, features):
    layer = fit_glm(features, C, PER_CLASS, settings=FAST)
    layer.save(tmp_path / 'glm.npz')
    back = SparseLayer.load(tmp_path / 'glm.npz')
    assert back.kind == 'glm' and back.info == layer.info
    for name in ('channels', 'weight', 'bias', 'mean', 'std'):
        assert np.array_equal(getattr(back, name), getattr(layer, name))


def test_without_glm_saga_the_error_names_the_extra(monkeypatch):
    real = builtins.__import__

    def no_glm_saga(name, *args, **kwargs):
        if name.startswith('glm_saga'):
            raise ImportError('No module named glm_saga')
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', no_glm_saga)
    with pytest.raises(ImportError, match=r'qpm-timm\[baselines\]'):
        import_glm_saga()


def test_normalised_clamps_a_vanishing_std():
    x = normalised(np.array([[1.0, 2.0]]), np.array([0.0, 2.0]), np.array([0.5, 0.0]))
    assert x.tolist() == [[2.0, 0.0]] and math.isfinite(float(x.abs().max()))


def test_the_group_path_stays_finite_with_zero_columns_and_constant_features_keep_zero_weights():
    """glm-saga's group threshold divides by a column's norm: a column that is exactly 0 must stay 0, not NaN."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, generator=g)
    x[:, 5] = 0.7  # a channel that never changes
    points = regularization_path(x, torch.arange(3), 3, GROUP_SELECTION.replace(k=6, max_epochs=5))
    assert all(torch.isfinite(p.weight).all() for p in points)
    assert all(not p.weight[:, 5].any() for p in points)

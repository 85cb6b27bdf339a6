"""Tests of the one-pass streaming statistics (docs/METHOD.md, "Pipeline" stage 2 and "Locality bias")."""
import os
import weakref
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from qpm_timm.stats import (
    LOCALITY_BIAS_SCALE,
    QPMStatistics,
    StatisticsAccumulator,
    clip_outliers_and_scale,
    collect_statistics,
    feature_shares,
    finish_locality_bias,
    largest_cluster_range,
    mean_shift_1d,
    peak_softmax_and_border,
)

RTOL = 1e-6
UNEVEN_BATCHES = (1, 13, 2, 30, 7, 19)  # 72 images


def make_data(n=72, f=6, c=4, h=5, w=4, seed=0):
    """ReLU feature maps (non-square) correlated with the classes; image 5 is all zero."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % c
    offsets = torch.randn(c, f, 1, 1, generator=g)
    maps = torch.relu(torch.randn(n, f, h, w, generator=g) * 2 + offsets[targets])
    maps[5] = 0
    return maps, maps.mean(dim=(2, 3)), targets


def reference(pooled, targets, maps, num_classes):
    """Direct numpy computation on stored features (the authors' formulas, float64)."""
    x = pooled.numpy().astype(np.float64)
    t = targets.numpy()
    n = x.shape[0]
    mean, std = x.mean(0), x.std(0)
    corr = np.zeros((x.shape[1], num_classes))
    for c in range(num_classes):
        y = (t == c).astype(np.float64)
        corr[:, c] = (x - mean).T @ (y - y.mean()) / n / (std * y.std())
    m = maps.numpy().astype(np.float64).reshape(n, x.shape[1], -1)
    soft = np.exp(m - m.max(2, keepdims=True))
    peak = (soft / soft.sum(2, keepdims=True)).max(2)
    row, col = np.divmod(m.argmax(2), maps.shape[3])
    border = (row == 0) | (row == maps.shape[2] - 1) | (col == 0) | (col == maps.shape[3] - 1)
    positive = np.clip(x, 0, None)
    total = positive.sum(1, keepdims=True)
    shares = np.divide(positive, total, out=np.zeros_like(positive), where=total > 0)
    return dict(A=corr / np.abs(corr).max(), mean=mean, std=std, locality=(peak * shares).sum(0) / n,
                edge=-(border * shares).sum(0))


def accumulate(pooled, targets, maps, num_classes, batches=UNEVEN_BATCHES):
    acc = StatisticsAccumulator(pooled.shape[1], num_classes)
    start = 0
    for size in batches:
        acc.update(pooled[start:start + size], targets[start:start + size], maps[start:start + size])
        start += size
    assert start == pooled.shape[0]
    return acc


def assert_matches_reference(stats, ref):
    for key in ("A", "mean", "std", "locality", "edge"):
        np.testing.assert_allclose(getattr(stats, key), ref[key], rtol=RTOL, atol=1e-12, err_msg=key)


def test_streaming_statistics_in_uneven_batches_equal_direct_numpy_computation():
    maps, pooled, targets = make_data()
    stats = accumulate(pooled, targets, maps, 4).compute()
    assert_matches_reference(stats, reference(pooled, targets, maps, 4))
    np.testing.assert_array_equal(stats.class_counts, np.bincount(targets.numpy(), minlength=4))
    assert stats.num_images == 72
    assert np.isfinite(stats.B).all()


def test_batching_does_not_change_the_statistics():
    maps, pooled, targets = make_data(seed=1)
    one_batch = accumulate(pooled, targets, maps, 4, batches=(72,)).compute()
    uneven = accumulate(pooled, targets, maps, 4).compute()
    for key in ("A", "B", "mean", "std", "locality", "edge"):
        np.testing.assert_allclose(getattr(uneven, key), getattr(one_batch, key), rtol=1e-9, atol=1e-12)


def test_std_stays_accurate_for_a_large_mean_with_small_spread():
    # mean 1e4, std ~1e-2: sum(x^2)/N - mean^2 without a shift would lose ~1e-4 relative.
    maps, pooled, targets = make_data(seed=2)
    g = torch.Generator().manual_seed(3)
    pooled = pooled.clone()
    pooled[:, 0] = 1e4 + 1e-2 * torch.randn(72, generator=g)
    stats = accumulate(pooled, targets, maps, 4).compute()
    assert_matches_reference(stats, reference(pooled, targets, maps, 4))


def test_constant_feature_gets_zero_std_and_zero_correlation_row_without_nan():
    maps, pooled, targets = make_data(seed=4)
    maps, pooled = maps.clone(), pooled.clone()
    maps[:, 2], pooled[:, 2] = 0.7, 0.7
    stats = accumulate(pooled, targets, maps, 4).compute()
    for key in ("A", "B", "mean", "std", "locality", "edge"):
        assert np.isfinite(getattr(stats, key)).all(), key
    assert stats.std[2] == 0 and np.all(stats.A[2] == 0)
    assert stats.mean[2] == pytest.approx(0.7, rel=1e-7)
    keep = [0, 1, 3, 4, 5]
    ref = reference(pooled[:, keep], targets, maps[:, keep], 4)
    np.testing.assert_allclose(stats.A[keep], ref["A"], rtol=RTOL)


def test_all_features_constant_raises_value_error():
    maps = torch.ones(8, 3, 2, 2)
    acc = StatisticsAccumulator(3, 2)
    acc.update(maps.mean((2, 3)), torch.arange(8) % 2, maps)
    with pytest.raises(ValueError, match="constant"):
        acc.compute()


def test_absent_class_raises_value_error_naming_it():
    maps, pooled, targets = make_data(c=4)
    keep = targets != 2
    acc = accumulate(pooled[keep], targets[keep], maps[keep], 5, batches=(int(keep.sum()),))
    with pytest.raises(ValueError, match=r"classes \[2, 4\]"):
        acc.compute()


def test_no_images_raises_value_error():
    with pytest.raises(ValueError, match="no images"):
        StatisticsAccumulator(3, 2).compute()


@pytest.mark.parametrize("pooled, targets, maps, error", [
    (torch.rand(4, 3), torch.tensor([0, 1, 2, 1]), torch.rand(4, 3, 2, 2), ValueError),  # class 2 of 2
    (torch.rand(4, 3), torch.tensor([0.0, 1.0, 1.0, 0.0]), torch.rand(4, 3, 2, 2), TypeError),
    (torch.rand(4, 2), torch.tensor([0, 1, 1, 0]), torch.rand(4, 3, 2, 2), ValueError),
    (torch.rand(4, 3), torch.tensor([0, 1, 1, 0]), torch.rand(4, 3, 4), ValueError),
    (torch.rand(4, 3), torch.tensor([0, 1, 1]), torch.rand(4, 3, 2, 2), ValueError),
])
def test_bad_update_input_raises_clear_error(pooled, targets, maps, error):
    with pytest.raises(error):
        StatisticsAccumulator(3, 2).update(pooled, targets, maps)


def test_shares_use_the_positive_part_of_activations():
    shares = feature_shares(torch.tensor([[-1.0, 1.0, 3.0], [-1.0, -2.0, 0.0], [2.0, 2.0, 0.0]]))
    torch.testing.assert_close(shares, torch.tensor([[0.0, 0.25, 0.75], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))


def test_peak_softmax_and_border_of_hand_made_maps():
    maps = torch.zeros(1, 3, 3, 4)
    maps[0, 0, 1, 1] = np.log(12.0)  # interior; softmax peak 12 / (12 + 11) = 12/23
    maps[0, 1, 2, 2] = 1.0  # bottom row
    maps[0, 2, 1, 3] = 1.0  # right column of a non-square map
    peak, border = peak_softmax_and_border(maps)
    assert peak[0, 0].item() == pytest.approx(12 / 23, rel=1e-6)
    assert peak[0, 1].item() == pytest.approx(np.e / (np.e + 11), rel=1e-6)
    assert border.tolist() == [[False, True, True]]


@pytest.mark.parametrize("name", ["bimodal_with_outliers", "skewed", "half_equal"])
def test_mean_shift_1d_equals_scikit_learn_mean_shift(name):
    from sklearn.cluster import MeanShift, estimate_bandwidth

    rng = np.random.default_rng(0)
    values = {
        "bimodal_with_outliers": np.concatenate([rng.normal(0, 1, 150), rng.normal(8, 1, 20), [30.0, -25.0]]),
        "skewed": rng.lognormal(0, 1, 150),
        "half_equal": np.where(rng.random(150) < 0.5, -0.17, rng.normal(0.1, 0.1, 150)),  # like B's last step
    }[name]
    bandwidth = estimate_bandwidth(values.reshape(-1, 1))
    expected = MeanShift(bandwidth=bandwidth).fit(values.reshape(-1, 1))
    centres, labels = mean_shift_1d(values, bandwidth)
    np.testing.assert_allclose(centres, expected.cluster_centers_.ravel(), rtol=0, atol=1e-9 * bandwidth)
    np.testing.assert_array_equal(labels, expected.labels_)


def test_clipping_sets_outliers_to_the_largest_cluster_ends_then_centres_and_scales():
    cluster = np.linspace(10.0, 11.0, 21)
    values = np.concatenate([cluster, [100.0, 1.0, -100.0]])
    assert largest_cluster_range(values) == (10.0, 11.0)
    # beyond an end e an outlier v becomes |e| * sign(v) (the authors' rule): 100 -> 11 and
    # 1 -> 10 (plain clipping), -100 -> -10 (its sign differs from the end's).
    expected = np.concatenate([cluster, [11.0, 10.0, -10.0]])
    expected = expected - expected.mean()
    expected *= LOCALITY_BIAS_SCALE / np.abs(expected).max()
    np.testing.assert_allclose(clip_outliers_and_scale(values), expected, rtol=1e-12)


def test_clipping_of_all_equal_values_gives_zeros():
    np.testing.assert_array_equal(clip_outliers_and_scale(np.full(5, 3.0)), np.zeros(5))


def test_locality_bias_favours_local_features_away_from_the_border():
    rng = np.random.default_rng(0)
    locality = rng.uniform(0.1, 0.5, 40)
    often_on_border = np.arange(40) % 3 == 0
    edge = np.where(often_on_border, rng.uniform(-1.0, -0.8, 40), rng.uniform(-0.05, 0.0, 40))
    b = finish_locality_bias(locality, edge)
    assert b.mean() == pytest.approx(0.0, abs=1e-12)
    assert np.abs(b).max() == pytest.approx(LOCALITY_BIAS_SCALE)
    border = clip_outliers_and_scale(edge) < 0  # "B = locality where edge >= 0 else min(locality)"
    assert border[often_on_border].all() and not border.all()
    assert np.allclose(b[border], b.min())
    away = np.flatnonzero(~border)
    order = away[np.argsort(locality[away])]
    assert np.all(np.diff(b[order]) >= 0)  # away from the border: B grows with locality
    assert b[order[-1]] == b.max() > b.min()


def test_clipping_to_a_single_valued_largest_cluster_keeps_the_sign_pattern():
    # As in B's last step, most features share min(locality): the largest cluster is that single
    # value, and the other two become +|min| (not flattened to zeros): zero mean -> -1/4 and 1.
    values = np.array([-0.17] * 8 + [0.07, 0.3])
    assert largest_cluster_range(values) == (-0.17, -0.17)
    np.testing.assert_allclose(clip_outliers_and_scale(values) / LOCALITY_BIAS_SCALE, [-0.25] * 8 + [1.0] * 2,
                               rtol=1e-12)


def test_statistics_save_load_round_trip_is_atomic(tmp_path):
    maps, pooled, targets = make_data()
    stats = accumulate(pooled, targets, maps, 4).compute()
    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = QPMStatistics.load(path)
    for key in ("A", "B", "mean", "std", "locality", "edge", "class_counts"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(stats, key))
        assert getattr(loaded, key).dtype == getattr(stats, key).dtype
    assert loaded.num_images == stats.num_images
    assert sorted(os.listdir(tmp_path)) == ["stats.npz"]  # no temporary file left
    np.savez(tmp_path / "other.npz", A=stats.A)
    with pytest.raises(ValueError, match="missing"):
        QPMStatistics.load(tmp_path / "other.npz")


def _held_tensor_bytes(obj, seen=None):
    """Bytes of every tensor or array reachable from ``obj``'s attributes, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_held_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(_held_tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.device)):
        return _held_tensor_bytes(vars(obj), seen)
    return 0


def test_accumulator_holds_the_same_bytes_after_many_batches_and_keeps_no_batch():
    maps, pooled, targets = make_data()
    acc = StatisticsAccumulator(6, 4)
    acc.update(pooled[:12], targets[:12], maps[:12])
    after_one = _held_tensor_bytes(acc)
    batches = [(pooled[i:i + 12].clone(), targets[i:i + 12].clone(), maps[i:i + 12].clone()) for i in range(12, 72, 12)]
    released = [weakref.ref(tensor) for batch in batches for tensor in batch]
    for batch in batches:
        acc.update(*batch)
    del batches, batch
    assert acc.num_images == 72
    assert _held_tensor_bytes(acc) == after_one
    assert all(ref() is None for ref in released)  # nothing, anywhere, keeps a batch alive


def _ddp_worker(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)  # two ranks on a small shared machine
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        maps, pooled, targets = make_data()
        shard = slice(0, 43) if rank == 0 else slice(43, 72)  # uneven shards
        acc = accumulate(pooled[shard], targets[shard], maps[shard], 4,
                         batches=(5, 38) if rank == 0 else (29,))
        acc.all_reduce()
        acc.compute().save(os.path.join(out_dir, f"rank{rank}.npz"))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_all_reduce_equals_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    maps, pooled, targets = make_data()
    single = accumulate(pooled, targets, maps, 4).compute()
    for rank in range(2):
        reduced = QPMStatistics.load(tmp_path / f"rank{rank}.npz")
        for key in ("A", "B", "mean", "std", "locality", "edge"):
            np.testing.assert_allclose(getattr(reduced, key), getattr(single, key), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(reduced.class_counts, single.class_counts)
        assert reduced.num_images == 72


class _Output(NamedTuple):
    logits: torch.Tensor
    feature_maps: torch.Tensor
    pooled: torch.Tensor


class TinyDense(nn.Module):
    """Stand-in for a dense QPM model: conv + BN + ReLU maps, pooled, linear head."""

    def __init__(self, num_classes=3, num_features=5):
        super().__init__()
        self.conv = nn.Conv2d(3, num_features, 3, padding=1)
        self.bn = nn.BatchNorm2d(num_features)
        self.fc = nn.Linear(num_features, num_classes)
        self.modes = []

    def forward_with_features(self, x):
        self.modes.append((self.training, torch.is_grad_enabled()))
        maps = torch.relu(self.bn(self.conv(x)))
        pooled = maps.mean((2, 3))
        return _Output(self.fc(pooled), maps, pooled)


def _image_loader(n=30, num_classes=3, size=8, batch_size=7):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    targets = torch.arange(n) % num_classes
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, targets), batch_size=batch_size)


def _eval_features(model, loader):
    """Pooled features, targets and maps of ``model`` in eval mode, stored (the direct reference)."""
    model.eval()
    with torch.no_grad():
        outs = [(model.forward_with_features(x), y) for x, y in loader]
    return (torch.cat([o.pooled for o, _ in outs]), torch.cat([y for _, y in outs]),
            torch.cat([o.feature_maps for o, _ in outs]))


def test_collect_statistics_runs_the_model_in_eval_and_inference_mode_and_restores_train_mode():
    torch.manual_seed(0)
    model = TinyDense()
    model.bn.running_mean.uniform_(-0.5, 0.5)  # eval-mode BN differs from train-mode BN
    loader = _image_loader()
    stats = collect_statistics(model, loader, num_classes=3)
    assert model.training and all(m == (False, False) for m in model.modes)
    pooled, targets, maps = _eval_features(model, loader)
    assert_matches_reference(stats, reference(pooled, targets, maps, 3))


def test_collect_statistics_under_bfloat16_autocast_stays_close_to_float32():
    torch.manual_seed(0)
    model = TinyDense()
    loader = _image_loader()
    exact = collect_statistics(model, loader, num_classes=3)
    mixed = collect_statistics(model, loader, num_classes=3, amp=True)
    np.testing.assert_allclose(mixed.mean, exact.mean, rtol=0.05, atol=1e-2)
    np.testing.assert_allclose(mixed.A, exact.A, atol=0.1)


def test_collect_statistics_rejects_a_model_without_forward_with_features():
    with pytest.raises(TypeError, match="forward_with_features"):
        collect_statistics(nn.Linear(3, 3), _image_loader(), num_classes=3)


def test_collect_statistics_with_a_dense_qpm_resnet18():
    import qpm_timm

    torch.manual_seed(0)
    model = qpm_timm.create_qpm("resnet18", num_classes=4, head="dense")
    loader = _image_loader(n=16, num_classes=4, size=32, batch_size=6)
    stats = collect_statistics(model, loader, num_classes=4)
    pooled, targets, maps = _eval_features(model, loader)
    assert stats.A.shape == (model.num_features, 4) and stats.num_images == 16
    assert np.isfinite(stats.B).all()
    live = stats.std > 0  # random-init ReLU features of a tiny input may be constant (dead)
    ref = reference(pooled[:, live], targets, maps[:, live], 4)
    np.testing.assert_allclose(stats.A[live], ref["A"], rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(stats.mean, pooled.double().mean(0).numpy(), rtol=RTOL, atol=1e-12)

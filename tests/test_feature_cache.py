"""The frozen-backbone feature cache (qpm_timm/data/feature_cache.py, docs/FEATURE_CACHE.md), on tiny models."""
import copy
import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T

import qpm_timm
from qpm_timm.data import (
    ConceptsDataset,
    FeatureCache,
    build_feature_cache,
    cache_key,
    ensure_feature_cache,
    feature_cache_bytes,
    open_feature_cache,
)
from qpm_timm.stats import collect_statistics

EVAL = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.2,) * 3)])
AUGMENT = T.Compose([T.RandomResizedCrop(32, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])
BATCH = 4
TINY_VIT = dict(img_size=56, embed_dim=64, depth=2, num_heads=2)  # 4 x 4 patch grid


def _dataset(transform=EVAL, seed=0):
    return ConceptsDataset(num_classes=4, num_concepts=4, concepts_per_class=2, img_size=32, images_per_class=3,
                           seed=seed, transform=transform)


def _model(backbone='resnet18', **kwargs):
    torch.manual_seed(0)
    model = qpm_timm.create_qpm(backbone, num_classes=4, n_features=6, n_per_class=2, head='dense', **kwargs)
    model.freeze_backbone()
    return model


@pytest.fixture(scope='module')
def resnet():
    return _model(reduced_strides=True)  # 4 x 4 maps at 32 px


def _count_backbone_calls(model):
    """Wrap the instance's forward_backbone; the returned list gets the batch size of every call."""
    calls, forward = [], model.forward_backbone

    def counted(x):
        calls.append(x.shape[0])
        return forward(x)

    model.forward_backbone = counted
    return calls


def _reference_maps(model, dataset):
    """model.forward_backbone over the dataset in order, as the build batches it."""
    model.eval()
    with torch.inference_mode():
        return torch.cat([model.forward_backbone(x) for x, _ in DataLoader(dataset, BATCH)])


def _all_maps(cache):
    return torch.stack([cache[i][0] for i in range(len(cache))])


def _ensure(model, dataset, path, **kwargs):
    return ensure_feature_cache(model, dataset, path, batch_size=BATCH, **kwargs)


@pytest.mark.parametrize('backbone, kwargs', [
    ('resnet18', dict(reduced_strides=True)),
    ('vit_small_patch14_reg4_dinov2', TINY_VIT),
])
def test_cached_maps_equal_forward_backbone_exactly_in_float32_and_within_rounding_in_float16(
        tmp_path, backbone, kwargs):
    model = _model(backbone, **kwargs)
    size = kwargs.get('img_size', 32)
    dataset = _dataset(T.Compose([T.Resize(size), EVAL]))
    expected = _reference_maps(model, dataset)
    f32 = _ensure(model, dataset, tmp_path / 'f32', dtype='float32')
    f16 = _ensure(model, dataset, tmp_path / 'f16', dtype=torch.float16)

    assert torch.equal(_all_maps(f32), expected)
    torch.testing.assert_close(_all_maps(f16), expected, rtol=1e-3, atol=1e-4)
    assert _all_maps(f16).dtype == torch.float32
    assert f32.targets == dataset.targets and [f32[i][1] for i in range(len(f32))] == dataset.targets
    assert (f32.views, f32.image_size, f32.backbone) == (1, (size, size), model.backbone_name)
    assert f32.key == cache_key(model, dataset.transform, dataset)
    shape = (1, len(dataset), *expected.shape[1:])
    assert f32.maps.shape == shape
    assert os.path.getsize(tmp_path / 'f16' / 'maps.npy') - feature_cache_bytes(shape, 'float16') < 256  # + header


@pytest.mark.parametrize('backbone, kwargs', [
    ('resnet18', dict(reduced_strides=True)),
    ('vit_small_patch14_reg4_dinov2', dict(TINY_VIT, adapter_depth=2, adapter_hidden=32, adapter_dim=16)),
])
def test_statistics_and_fit_qpm_from_the_cache_equal_those_from_images(tmp_path, backbone, kwargs):
    model = _model(backbone, **kwargs)
    dataset = _dataset(T.Compose([T.Resize(kwargs.get('img_size', 32)), EVAL]))
    cache = _ensure(model, dataset, tmp_path / 'cache', dtype='float32')
    from_images = collect_statistics(model, DataLoader(dataset, 5), 4)
    with model.reading_backbone_maps():
        from_cache = collect_statistics(model, DataLoader(cache, 5), 4)
    for field in ('A', 'B', 'mean', 'std', 'locality', 'edge', 'class_counts'):
        np.testing.assert_allclose(getattr(from_cache, field), getattr(from_images, field), rtol=1e-5, atol=1e-6,
                                   err_msg=field)

    fit_images = qpm_timm.fit_qpm(copy.deepcopy(model), DataLoader(dataset, 5), effort=1, time_limit=30)
    cached_model = copy.deepcopy(model)
    with cached_model.reading_backbone_maps():
        fit_cache = qpm_timm.fit_qpm(cached_model, DataLoader(cache, 5), effort=1, time_limit=30)
    np.testing.assert_array_equal(fit_cache.selected_channels, fit_images.selected_channels)
    np.testing.assert_array_equal(fit_cache.solution.assignment, fit_images.solution.assignment)


def test_ensure_reuses_a_matching_cache_without_a_forward_pass(tmp_path, resnet):
    model, dataset = copy.deepcopy(resnet), _dataset()
    calls = _count_backbone_calls(model)
    first = _ensure(model, dataset, tmp_path)
    assert sum(calls) == len(dataset)
    mtime = (tmp_path / 'maps.npy').stat().st_mtime_ns
    again = _ensure(model, _dataset(), tmp_path)  # an equal dataset, built again
    assert sum(calls) == len(dataset) and (tmp_path / 'maps.npy').stat().st_mtime_ns == mtime
    assert again.key == first.key
    _ensure(model, dataset, tmp_path, dtype='float32')  # another storage dtype is another cache
    assert sum(calls) == 2 * len(dataset)


@pytest.mark.parametrize('change', ['backbone weights', 'backbone strides', 'transform', 'dataset', 'views'])
def test_key_changes_and_ensure_rebuilds_when_an_input_changes(tmp_path, resnet, caplog, change):
    model, dataset, views = copy.deepcopy(resnet), _dataset(), 0
    _ensure(model, dataset, tmp_path)
    old_key = cache_key(model, dataset.transform, dataset)
    if change == 'backbone weights':
        with torch.no_grad():
            model.backbone.conv1.weight[0, 0, 0, 0] += 1e-3
    elif change == 'backbone strides':  # same weights, other module structure
        other = _model()
        other.backbone.load_state_dict(model.backbone.state_dict())
        model = other
    elif change == 'transform':
        dataset = _dataset(T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)]))
    elif change == 'dataset':
        dataset = _dataset(seed=1)
    else:
        views = 1
    assert cache_key(model, dataset.transform, dataset, views) != old_key
    calls = _count_backbone_calls(model)
    with caplog.at_level(logging.WARNING, logger='qpm_timm.data.feature_cache'):
        cache = _ensure(model, dataset, tmp_path, views=views)
    assert sum(calls) == len(dataset)
    assert cache.key == cache_key(model, dataset.transform, dataset, views)
    assert 'stale: built for backbone resnet18' in caplog.text
    torch.testing.assert_close(_all_maps(cache), _reference_maps(model, dataset), rtol=1e-3, atol=1e-4)


def test_ensure_rebuilds_when_the_transform_of_a_subsets_parent_changes(tmp_path, resnet):
    model = copy.deepcopy(resnet)
    _ensure(model, Subset(_dataset(), range(6)), tmp_path)
    calls = _count_backbone_calls(model)
    other = _dataset(T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)]))
    cache = _ensure(model, Subset(other, range(6)), tmp_path)
    assert sum(calls) == 6 and cache.key == cache_key(model, other.transform, Subset(other, range(6)))


def test_a_truncated_maps_file_is_refused_naming_the_file_not_rebuilt(tmp_path, resnet):
    dataset = _dataset()
    _ensure(resnet, dataset, tmp_path)
    maps = tmp_path / 'maps.npy'
    with open(maps, 'r+b') as fh:
        fh.truncate(maps.stat().st_size - 100)
    for attempt in (lambda: open_feature_cache(tmp_path), lambda: _ensure(resnet, dataset, tmp_path)):
        with pytest.raises(ValueError, match='truncated') as e:
            attempt()
        assert str(maps) in str(e.value) and 'Delete the folder' in str(e.value)


def test_a_cache_of_another_backbone_is_refused_naming_both_and_ensure_rebuilds_it(tmp_path, resnet, caplog):
    dataset = _dataset()
    _ensure(resnet, dataset, tmp_path)
    other = _model('resnet10t')
    key = cache_key(other, dataset.transform, dataset)
    with pytest.raises(ValueError, match='built for backbone resnet18 .* not for resnet10t'):
        open_feature_cache(tmp_path, key, other.backbone_name)
    with caplog.at_level(logging.WARNING, logger='qpm_timm.data.feature_cache'):
        cache = _ensure(other, dataset, tmp_path)
    assert cache.backbone == 'resnet10t' and 'built for backbone resnet18' in caplog.text


def test_a_build_killed_midway_leaves_no_complete_looking_cache_and_the_next_ensure_rebuilds(tmp_path, resnet):
    model, dataset = copy.deepcopy(resnet), _dataset()
    _ensure(model, dataset, tmp_path)  # a good earlier cache, then the weights change and the rebuild dies
    with torch.no_grad():
        model.backbone.conv1.weight.mul_(1.01)
    forward = model.forward_backbone

    def dies_on_second_batch(x, calls=[]):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt('killed')
        return forward(x)

    model.forward_backbone = dies_on_second_batch
    with pytest.raises(KeyboardInterrupt):
        _ensure(model, dataset, tmp_path)
    assert json.loads((tmp_path / 'cache.json').read_text())['complete'] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cache.json']  # old data gone, no partial files left
    with pytest.raises(ValueError, match='incomplete'):
        open_feature_cache(tmp_path)
    model.forward_backbone = forward
    cache = _ensure(model, dataset, tmp_path)
    assert cache.key == cache_key(model, dataset.transform, dataset)
    torch.testing.assert_close(_all_maps(cache), _reference_maps(model, dataset), rtol=1e-3, atol=1e-4)


def test_augmented_views_are_reproducible_per_seed_differ_between_views_and_leave_the_rngs_alone(tmp_path, resnet):
    dataset = _dataset(AUGMENT)
    torch.manual_seed(123)
    a = _ensure(resnet, dataset, tmp_path / 'a', views=2, seed=5)
    after_build = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_build)  # the build did not consume the caller's random stream
    b = _ensure(resnet, dataset, tmp_path / 'b', views=2, seed=5)
    c = _ensure(resnet, dataset, tmp_path / 'c', views=2, seed=6)
    in_workers = [_ensure(resnet, dataset, tmp_path / f'w{i}', views=2, seed=5, num_workers=1) for i in range(2)]
    assert a.views == 2 and a.maps.shape[:2] == (2, len(dataset))
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(in_workers[0].maps, in_workers[1].maps)  # worker seeds come from (seed, view)
    assert not np.array_equal(a.maps[0], a.maps[1])
    assert not np.array_equal(a.maps[0], c.maps[0])
    a.set_epoch(3)
    assert torch.equal(a[0][0], torch.from_numpy(a.maps[1, 0].astype(np.float32)))
    a.set_epoch(4)
    assert torch.equal(a[0][0], torch.from_numpy(a.maps[0, 0].astype(np.float32)))


def test_a_pickled_cache_carries_no_maps_and_reads_the_same(tmp_path, resnet):
    cache = _ensure(resnet, _dataset(), tmp_path)
    _ = cache[0]  # maps the file in this process
    blob = pickle.dumps(cache)  # what a spawned DataLoader worker receives
    assert len(blob) < cache.maps.nbytes
    clone = pickle.loads(blob)
    assert isinstance(clone, FeatureCache) and torch.equal(clone[5][0], cache[5][0]) and clone[5][1] == cache[5][1]


def test_bad_input_is_refused_with_the_fix(tmp_path, resnet):
    dataset = _dataset()
    trainable = qpm_timm.create_qpm('resnet18', num_classes=4, n_features=6, n_per_class=2, head='dense')
    with pytest.raises(ValueError, match='not frozen.*freeze_backbone'):
        build_feature_cache(trainable, dataset, tmp_path / 'x', 'key')
    with pytest.raises(ValueError, match="dtype must be one of \\('float16', 'float32'\\)"):
        _ensure(resnet, dataset, tmp_path / 'y', dtype=torch.bfloat16)
    with pytest.raises(ValueError, match='no feature cache in'):
        open_feature_cache(tmp_path / 'missing')
    huge = copy.deepcopy(resnet)
    forward = huge.forward_backbone
    huge.forward_backbone = lambda x: forward(x) * 1e9
    with pytest.raises(ValueError, match='not finite in float16.*dtype=float32'):
        _ensure(huge, dataset, tmp_path / 'z')


def _ddp_worker(rank, folder, init_file, results):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        model = _model(reduced_strides=True)
        calls = _count_backbone_calls(model)
        cache = _ensure(model, _dataset(), folder)
        results[rank] = (sum(calls), cache.key, _all_maps(cache).sum().item())
    finally:
        torch.distributed.destroy_process_group()


def test_under_torch_distributed_rank_0_builds_and_the_other_rank_opens_its_cache(tmp_path):
    results = torch.multiprocessing.Manager().dict()
    # spawn, not fork: a fork of a process whose torch thread pools already ran can deadlock
    torch.multiprocessing.start_processes(_ddp_worker, args=(tmp_path / 'cache', tmp_path / 'init', results),
                                          nprocs=2, start_method='spawn')
    assert results[0][0] == len(_dataset()) and results[1][0] == 0
    assert results[0][1:] == results[1][1:]

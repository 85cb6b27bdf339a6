"""Explanations of a QPM: tables, local explanations, heatmaps, the streaming gallery, names, contrastive pairs.

Most tests use a constructed QPM whose feature j fires only in quadrant j of the image (its map is the image's
brightness there), so where every explanation must point is known.
"""
import itertools
import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

import qpm_timm
from qpm_timm import hub
from qpm_timm.explain import (
    FeatureGallery,
    GalleryCollector,
    class_feature_table,
    contrastive_pairs,
    dataset_annotations,
    difference_contributions,
    explain,
    explain_top,
    feature_colours,
    heatmaps,
    model_feature_table,
    name_features,
    pair_features,
    patch_box,
    resolve_class,
    spread_pairs,
)
from qpm_timm.forward import forward_pass
from qpm_timm.metrics import concept_recovery
from qpm_timm.models.head import placeholder_assignment
from qpm_timm.stats import collect_statistics

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

ASSIGNMENT = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
SIZE, GRID = 64, 8  # image side, feature map side
QUADRANTS = [(slice(0, 32), slice(0, 32)), (slice(0, 32), slice(32, 64)), (slice(32, 64), slice(0, 32)),
             (slice(32, 64), slice(32, 64))]  # (rows, cols) of feature j's region


def _qpm():
    model = qpm_timm.create_qpm('resnet18', num_classes=3, n_features=4, n_per_class=2, head='dense')
    model.set_qpm_head(torch.tensor([7, 3, 500, 42]), ASSIGNMENT, torch.zeros(4), torch.ones(4))
    return model.eval()


class RegionBackbone(nn.Module):
    """Channel j = the image's mean brightness on an 8 x 8 grid, zero outside quadrant j (its known region)."""

    def __init__(self):
        super().__init__()
        masks = torch.zeros(4, GRID, GRID)
        half = GRID // 2
        for j, (rows, cols) in enumerate([(slice(0, half), slice(0, half)), (slice(0, half), slice(half, GRID)),
                                          (slice(half, GRID), slice(0, half)), (slice(half, GRID), slice(half, GRID))]):
            masks[j, rows, cols] = 1
        self.register_buffer('masks', masks)
        self.gain = nn.Parameter(torch.ones(()))  # a QPMModel reads its device and dtype from the backbone

    def forward_features(self, x):
        return F.adaptive_avg_pool2d(x.mean(1, keepdim=True), GRID).relu() * self.masks * self.gain


def _region_qpm(num_classes=4):
    model = qpm_timm.create_qpm('test_resnet', num_classes=num_classes, n_features=4, n_per_class=2, head='dense')
    model.backbone = RegionBackbone()
    model.set_qpm_head(torch.arange(4), placeholder_assignment(num_classes, 4, 2), torch.full((4,), 0.05),
                       torch.full((4,), 0.1))
    return model.eval()


def _blob_images(n, seed=0):
    """Images with one bright square at the centre of every quadrant, of random brightness, on a dim noisy
    background; returns the images and the blob brightness (n, 4)."""
    g = torch.Generator().manual_seed(seed)
    images = 0.02 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    brightness = 0.3 + 0.7 * torch.rand(n, 4, generator=g)
    for j, (rows, cols) in enumerate(QUADRANTS):
        r, c = rows.start + 12, cols.start + 12
        images[:, :, r:r + 8, c:c + 8] += brightness[:, j, None, None, None]
    return images, brightness


def _region_run(n, num_classes=4):
    """The region QPM, ``n`` blob images with their quadrant brightness, and its forward_with_features output."""
    model = _region_qpm(num_classes)
    images, brightness = _blob_images(n)
    with torch.no_grad():
        return model, images, brightness, model.forward_with_features(images)


def _inside(box, j):
    """Fraction of the patch ``box`` (top, left, bottom, right) that lies in quadrant j."""
    rows, cols = QUADRANTS[j]
    top, left, bottom, right = box
    height = max(0, min(bottom, rows.stop) - max(top, rows.start))
    width = max(0, min(right, cols.stop) - max(left, cols.start))
    overlap = height * width
    return overlap / ((bottom - top) * (right - left))


# --- tables --------------------------------------------------------------------------------------------------------
def test_table_lists_every_class_its_features_and_how_many_classes_share_each():
    table = class_feature_table(ASSIGNMENT, ['a', 'b', 'c'], ['x', 'y', 'z', 'w'])
    assert '| a | x, y |' in table and '| b | y, z |' in table and '| c | z, w |' in table
    assert table.endswith('classes per feature: x: 1, y: 2, z: 2, w: 1')
    short = class_feature_table(ASSIGNMENT, max_rows=1)
    assert '| class 0 | f0, f1 |' in short and '| ... | (2 more classes) |' in short and 'class 1 |' not in short
    with pytest.raises(ValueError, match='need 3 class names and 4 feature names'):
        class_feature_table(ASSIGNMENT, ['a'])


def test_model_table_names_features_by_their_backbone_channel_or_by_given_names():
    table = model_feature_table(_qpm(), ['a', 'b', 'c'])
    assert '| a | f0 (ch 7), f1 (ch 3) |' in table and '| c | f2 (ch 500), f3 (ch 42) |' in table
    names = ['f0 ≈ wing', 'f1 ≈ beak', 'f2 ≈ tail', 'f3 ≈ eye']
    named = model_feature_table(_qpm(), ['a', 'b', 'c'], names=names)
    assert '| b | f1 ≈ beak, f2 ≈ tail |' in named


# --- local explanations --------------------------------------------------------------------------------------------
def test_explanation_gives_the_predicted_class_features_whose_contributions_sum_to_its_logit():
    model = _qpm()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(images)
    for i, e in enumerate(explain(model, images)):
        assert e.class_index == int(logits[i].argmax())
        assert e.features == ASSIGNMENT[e.class_index].nonzero().flatten().tolist()
        assert sum(e.contributions) == pytest.approx(float(logits[i, e.class_index]), rel=1e-5, abs=1e-5)
        assert e.maps.shape[0] == 2


def test_explain_refuses_a_dense_model():
    with pytest.raises(ValueError, match='needs a QPM'):
        explain(qpm_timm.create_qpm('resnet18', num_classes=3, n_features=4, n_per_class=2, head='dense'),
                torch.randn(1, 3, 32, 32))


def test_local_explanation_of_the_region_model_gives_prediction_and_runner_up_with_exact_contributions():
    model, images, brightness, out = _region_run(6)
    # feature j reads quadrant j alone: its activation orders the images as that quadrant's brightness does
    for j in range(4):
        assert out.pooled[:, j].argsort().tolist() == brightness[:, j].argsort().tolist()
    for i, (first, second) in enumerate(explain_top(model, images, k=2)):
        assert (first.class_index, second.class_index) == tuple(out.logits[i].argsort(descending=True)[:2].tolist())
        for e in (first, second):
            assert sum(e.contributions) == pytest.approx(e.logit, abs=1e-5)
            assert e.logit == pytest.approx(float(out.logits[i, e.class_index]), abs=1e-5)
            expected = (out.pooled[i, e.features] - 0.05) / 0.1  # (x - mean) / std of the head
            np.testing.assert_allclose(e.contributions, expected.numpy(), rtol=1e-5, atol=1e-5)


# --- heatmaps ------------------------------------------------------------------------------------------------------
def test_heatmap_of_a_feature_that_fires_only_in_a_known_region_lies_in_that_region():
    _, _, _, out = _region_run(3)
    for i in range(3):
        heat = heatmaps(out.feature_maps[i], (SIZE, SIZE))
        for j, (rows, cols) in enumerate(QUADRANTS):
            assert heat[j].max() == pytest.approx(1.0)
            assert heat[j][rows, cols].sum() / heat[j].sum() > 0.97
            outside = np.ones((SIZE, SIZE), dtype=bool)  # farther than half a map cell (4 px) from the region
            outside[max(0, rows.start - 4):rows.stop + 4, max(0, cols.start - 4):cols.stop + 4] = False
            assert (heat[j][outside] == 0).all()


def test_heatmap_strength_is_the_activation_over_the_typical_active_value_at_most_one():
    maps = torch.zeros(2, 4, 4)
    maps[:, 1, 2] = torch.tensor([3.0, 0.5])
    heat = heatmaps(maps, (8, 8), pooled=torch.tensor([2.0, 0.25]), active=np.array([1.0, 1.0]))
    assert heat[0].max() == pytest.approx(1.0)  # fired more than typically: full strength
    assert heat[1].max() == pytest.approx(0.25)  # a weak activation looks weak
    assert heatmaps(maps, (8, 8))[1].max() == pytest.approx(1.0)  # without a scale: per map


def test_every_feature_has_its_own_colour():
    for n in (4, 12, 50, 80):
        colours = feature_colours(n)
        assert colours.shape == (n, 3) and len({tuple(c) for c in colours.round(4)}) == n


# --- gallery -------------------------------------------------------------------------------------------------------
def _gallery(model, loader, k=5, all_ranks=False):
    collector = GalleryCollector(k, channels=model.head.selection)
    forward_pass(model, loader, [collector])
    return collector.gather(all_ranks)


def test_streaming_gallery_keeps_each_features_top_images_with_patches_inside_its_region(tmp_path):
    model = _region_qpm()
    images, brightness = _blob_images(40, seed=1)
    dataset = TensorDataset(images, torch.arange(40) % 4)
    gallery = _gallery(model, DataLoader(dataset, batch_size=7))
    assert gallery.num_images == 40 and gallery.k == 5
    assert tuple(gallery.map_size) == (GRID, GRID) and tuple(gallery.image_size) == (SIZE, SIZE)
    with torch.no_grad():
        pooled = model.forward_with_features(images).pooled
    for j in range(4):
        assert gallery.index[j].tolist() == pooled[:, j].argsort(descending=True)[:5].tolist()
        assert gallery.index[j].tolist() == brightness[:, j].argsort(descending=True)[:5].tolist()
        np.testing.assert_allclose(gallery.score[j], pooled[gallery.index[j], j].numpy(), rtol=1e-6)
        assert gallery.label[j].tolist() == (gallery.index[j] % 4).tolist()
        for rank in range(5):
            assert _inside(gallery.patch(j, rank), j) > 0.9  # a crop of feature j's region
    # batching does not matter; a save/load round trip keeps everything
    again = _gallery(model, DataLoader(dataset, batch_size=40))
    np.testing.assert_array_equal(again.index, gallery.index)
    gallery.save(tmp_path / 'gallery.npz')
    loaded = FeatureGallery.load(tmp_path / 'gallery.npz')
    for name in ('channels', 'index', 'label', 'score', 'peak', 'location', 'map_size', 'image_size'):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(gallery, name))


def test_gallery_of_a_dense_models_channels_selects_the_qpm_rows_and_refuses_unknown_channels(tmp_path):
    dense = qpm_timm.create_qpm('test_resnet', num_classes=3, n_features=4, n_per_class=2, head='dense').eval()
    images = torch.randn(10, 3, 32, 32)
    collector = GalleryCollector(3)  # rows: every dense channel
    stats_with = collect_statistics(dense, DataLoader(TensorDataset(images, torch.arange(10) % 3), batch_size=4), 3,
                                    observers=[collector])
    stats_without = collect_statistics(dense, DataLoader(TensorDataset(images, torch.arange(10) % 3), batch_size=4), 3)
    np.testing.assert_array_equal(stats_with.A, stats_without.A)  # riding along changes nothing
    gallery = collector.gather()
    assert gallery.channels.tolist() == list(range(dense.num_features))
    chosen = gallery.select([50, 2, 7])
    assert chosen.channels.tolist() == [50, 2, 7]
    np.testing.assert_array_equal(chosen.index[0], gallery.index[50])
    with pytest.raises(ValueError, match='no rows for channels'):
        gallery.select([2, 500])
    (tmp_path / 'bad.npz').write_bytes(b'not a zip file')
    with pytest.raises(ValueError, match='not a readable gallery file'):
        FeatureGallery.load(tmp_path / 'bad.npz')
    with pytest.raises(FileNotFoundError):
        FeatureGallery.load(tmp_path / 'missing.npz')


def test_ties_go_to_the_lower_dataset_index_whatever_the_batching():
    dense = qpm_timm.create_qpm('test_resnet', num_classes=3, n_features=4, n_per_class=2, head='dense').eval()
    images = torch.zeros(9, 3, 32, 32)  # every image gives every channel the same activation
    for batch_size in (2, 9):
        collector = GalleryCollector(4)
        forward_pass(dense, DataLoader(TensorDataset(images, torch.zeros(9, dtype=torch.long)),
                                       batch_size=batch_size), [collector])
        assert (collector.gather().index == np.arange(4)).all()


def test_fewer_images_than_k_leave_empty_gallery_entries():
    model = _region_qpm()
    images, _ = _blob_images(3)
    gallery = _gallery(model, DataLoader(TensorDataset(images, torch.zeros(3, dtype=torch.long)), batch_size=2),
                       k=5)
    assert (gallery.index[:, 3:] == -1).all() and np.isneginf(gallery.score[:, 3:]).all()


def test_a_sharded_loader_reports_indices_into_the_whole_dataset():
    model = _region_qpm()
    images, _ = _blob_images(12)
    dataset = TensorDataset(images, torch.arange(12) % 4)
    seen = []
    forward_pass(model, DataLoader(Subset(dataset, range(1, 12, 2)), batch_size=4),
                 [lambda batch: seen.extend(batch.indices.tolist())])
    assert seen == list(range(1, 12, 2))
    shuffled = []
    forward_pass(model, DataLoader(dataset, batch_size=4, shuffle=True), [lambda b: shuffled.append(b.indices)])
    assert shuffled == [None] * 3  # a shuffled loader cannot map images back
    with pytest.raises(ValueError, match='unshuffled loader'):
        forward_pass(model, DataLoader(dataset, batch_size=4, shuffle=True), [GalleryCollector(2)])


def _ddp_gallery_worker(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    try:
        images, _ = _blob_images(21, seed=3)
        shard = Subset(TensorDataset(images, torch.arange(21) % 4), range(rank, 21, world_size))
        model, loader = _region_qpm(), DataLoader(shard, batch_size=4)
        _gallery(model, loader).save(os.path.join(out_dir, f'local{rank}.npz'))  # no collective: this shard's
        _gallery(model, loader, all_ranks=True).save(os.path.join(out_dir, f'rank{rank}.npz'))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_gallery_of_shards_equals_the_single_process_gallery(tmp_path):
    mp.spawn(_ddp_gallery_worker, args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2, join=True)
    images, _ = _blob_images(21, seed=3)
    single = _gallery(_region_qpm(), DataLoader(TensorDataset(images, torch.arange(21) % 4), batch_size=5))
    for rank in range(2):
        merged = FeatureGallery.load(tmp_path / f'rank{rank}.npz')
        np.testing.assert_array_equal(merged.index, single.index)
        np.testing.assert_array_equal(merged.location, single.location)
        assert merged.num_images == 21
        local = FeatureGallery.load(tmp_path / f'local{rank}.npz')
        assert local.num_images == len(range(rank, 21, 2)) and set(local.index[local.index >= 0] % 2) == {rank}


def test_patch_box_is_centred_on_the_cell_and_shifted_inside_the_image():
    assert patch_box((3, 3), (8, 8), (64, 64), fraction=0.25) == (20, 20, 36, 36)
    assert patch_box((0, 7), (8, 8), (64, 64), fraction=0.25) == (0, 48, 16, 64)


# --- names ---------------------------------------------------------------------------------------------------------
def test_feature_names_are_the_concepts_concept_recovery_matches():
    g = np.random.default_rng(0)
    presence = g.random((200, 5)) < 0.4
    pooled = presence[:, [3, 0, 4, 1]] + 0.3 * g.standard_normal((200, 4))  # feature j tracks concept [3,0,4,1][j]
    names = ['disk', 'ring', 'plus', 'stripes', 'checker']
    named = name_features([10, 11, 12, 13], torch.as_tensor(pooled), presence, names, 'planted concepts')
    matching = concept_recovery(pooled, presence, np.eye(4, dtype=bool), np.eye(4, 5, dtype=bool)).matching
    assert named.annotation == [names[k] for k in matching] == ['stripes', 'disk', 'checker', 'ring']
    assert named.labels[0].startswith('f0 ≈ stripes (r = 0.') and named.top[0][0][0] == 'stripes'
    assert all(r > 0.5 for r in named.correlation)
    plain = name_features([10, 11, 12, 13])
    assert plain.labels == ['f0 (ch 10)', 'f1 (ch 11)', 'f2 (ch 12)', 'f3 (ch 13)'] and plain.source == ''


def test_dataset_annotations_prefer_concepts_then_per_image_then_class_attributes():
    class Concepts:
        concept_presence, concept_names = np.eye(3, dtype=bool), ['a', 'b', 'c']

    class Birds:
        targets = [0, 1, 1]
        class_attributes = np.array([[100.0, 0.0], [20.0, 80.0]])
        attribute_names = ['has_wing_color::blue', 'has_bill_shape::cone']

        def image_attributes(self):
            return None

    values, names, source = dataset_annotations(Concepts())
    assert names == ['a', 'b', 'c'] and source == 'planted concepts'
    values, names, source = dataset_annotations(Birds())
    np.testing.assert_array_equal(values, [[100, 0], [20, 80], [20, 80]])
    assert source == 'class attribute percentages' and names[0] == 'has_wing_color::blue'
    birds = Birds()
    birds.image_attributes = lambda: np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)
    assert dataset_annotations(birds)[2] == 'per-image attributes'
    assert dataset_annotations(object()) is None


# --- contrastive pairs ---------------------------------------------------------------------------------------------
def test_contrastive_pairs_share_all_features_but_one_and_their_contributions_sum_to_the_logit_difference():
    w = placeholder_assignment(6, 4, 2)
    pairs = contrastive_pairs(w)
    expected = [(a, b) for a, b in itertools.combinations(range(6), 2) if int((w[a] * w[b]).sum()) == 1]
    assert pairs == expected
    spread = spread_pairs(pairs, 3)
    assert len(spread) == 3 and len({c for p in spread for c in p}) == 6  # three pairs, six different classes
    assert pair_features(w, 0, 1) == ([1], [0], [2])
    model, _, _, out = _region_run(2)
    z = model.head.normalize(out.pooled)
    for a, b in contrastive_pairs(model.class_weights):
        for i in range(2):
            terms = difference_contributions(z[i], model.class_weights, a, b)
            assert terms.sum() == pytest.approx(float(out.logits[i, a] - out.logits[i, b]), abs=1e-5)
            assert (terms[pair_features(model.class_weights, a, b)[1]] == 0).all()  # shared features cancel


def test_classes_are_found_by_index_or_name_and_a_missing_one_is_named():
    names = ['Black footed Albatross', 'Laysan Albatross']
    assert resolve_class(1, names) == 1 and resolve_class('0', names) == 0
    assert resolve_class('laysan albatross', names) == 1
    with pytest.raises(ValueError, match='class index 2 does not exist'):
        resolve_class(2, names)
    with pytest.raises(ValueError, match="class 'Sparrow' does not exist"):
        resolve_class('Sparrow', names)


# --- model card ----------------------------------------------------------------------------------------------------
def test_export_embeds_the_report_and_names_features_in_the_model_card(tmp_path):
    report = tmp_path / 'report'
    report.mkdir()
    (report / 'global.png').write_bytes(b'png')
    (report / 'index.html').write_text('<html></html>')
    names = ['f0 ≈ wing', 'f1 ≈ beak', 'f2 ≈ tail', 'f3 ≈ eye']
    hub.save_pretrained(_qpm(), tmp_path / 'export', label_names=['a', 'b', 'c'], feature_names=names,
                        report_dir=report)
    card = (tmp_path / 'export' / 'README.md').read_text(encoding='utf-8')
    assert '![class x feature assignment](report/global.png)' in card and '(report/index.html)' in card
    assert '| b | f1 ≈ beak, f2 ≈ tail |' in card
    assert (tmp_path / 'export' / 'report' / 'global.png').read_bytes() == b'png'
    assert json.loads((tmp_path / 'export' / 'config.json').read_text())['num_classes'] == 3

"""Plausibility, Feature grounding and Faithfulness (deletion) against constructed cases with known answers, and
the collector that gathers them over a dataset's masks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qpm_timm.data import ConceptsDataset, create_qpm_loader, create_qpm_transform
from qpm_timm.data.masks import dataset_masks, masks_on_grid, masks_through_transform
from qpm_timm.explain.grounding import ExplanationCollector
from qpm_timm.forward import forward_pass
from qpm_timm.metrics import (
    blank_windows,
    dilate_masks,
    feature_grounding,
    grounding_sums,
    peak_windows,
    plausibility,
)


def _grid_mask(h, w, rows, cols):
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


def test_plausibility_is_one_inside_the_dilated_object_and_zero_outside():
    h = w = 8
    obj = _grid_mask(h, w, slice(2, 4), slice(2, 4))  # a 2 x 2 object; dilated: rows/cols 1..4
    maps = torch.zeros(3, 2, h, w)
    maps[0, 0, 2:4, 2:4] = 1.0  # image 0: its class's feature fires on the object
    maps[1, 0, 4, 4] = 2.0  # image 1: next to it (inside the 3 x 3 dilation)
    maps[2, 0, 7, 0] = 1.0  # image 2: far away
    maps[:, 1] = 5.0  # feature 1 is constant and not used by class 0: no effect
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scores = plausibility(maps, weights, torch.zeros(3, dtype=torch.long), obj.expand(3, h, w))
    assert scores.tolist() == [1.0, 1.0, 0.0]
    # class 1's evidence is constant: shifted by its minimum it has no mass, which scores 0 (as DINO-QPM counts it)
    assert plausibility(maps, weights, torch.ones(3, dtype=torch.long), obj.expand(3, h, w)).tolist() == [0, 0, 0]
    # half the mass inside, half outside
    maps[0, 0, 7, 7] = 4.0
    assert plausibility(maps[:1], weights, torch.zeros(1, dtype=torch.long), obj[None]).item() == pytest.approx(0.5)


def test_dilation_grows_a_mask_by_one_cell():
    grown = dilate_masks(_grid_mask(5, 5, 2, 2))
    assert torch.equal(grown, _grid_mask(5, 5, slice(1, 4), slice(1, 4)))


def test_feature_grounding_is_one_only_inside_and_zero_only_outside_the_matched_concept():
    h = w = 6
    masks = torch.zeros(4, 2, h, w, dtype=torch.bool)
    masks[:2, 0, 0:2, 0:2] = True  # images 0, 1 hold concept 0 (top left)
    masks[2:, 1, 3:6, 3:6] = True  # images 2, 3 hold concept 1 (bottom right)
    maps = torch.zeros(4, 3, h, w)
    maps[:, 0] = masks[:, 0].float() * 3  # feature 0: only inside concept 0
    maps[:2, 1, 5, 0] = 1.0  # feature 1: fires in concept-0 images, but outside its mask
    maps[2:, 2] = masks[:, 1][2:].float() - 0.5  # feature 2: inside concept 1 (negative elsewhere: clipped)
    maps[2:, 2, 0, 5] = 0.5  # ... plus one cell outside: 9 inside, 1 outside (weights 0.5 each)
    sums = grounding_sums(maps, masks)
    grounding, chance = feature_grounding(*sums, matching=np.array([0, 0, 1]))
    np.testing.assert_allclose(grounding, [1.0, 0.0, 0.9])
    np.testing.assert_allclose(chance, [4 / 36, 4 / 36, 9 / 36])
    # the sums add over batches: two halves give the same answer
    halves = [grounding_sums(maps[i:i + 2], masks[i:i + 2]) for i in (0, 2)]
    added = tuple(a + b for a, b in zip(*halves))
    np.testing.assert_allclose(feature_grounding(*added, np.array([0, 0, 1]))[0], grounding)
    # unmatched, or matched to a concept no image holds: undefined
    assert np.isnan(feature_grounding(*grounding_sums(maps[:2], masks[:2]), np.array([-1, 1, 0]))[0]).all()


def test_peak_window_is_centred_on_the_maximum_and_kept_inside_the_grid():
    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 0, 4, 5] = 1.0
    maps[0, 1, 0, 7] = 1.0  # a corner: the window moves inside
    assert peak_windows(maps, 3)[0].tolist() == [[3, 4], [0, 5]]


def test_blanking_zeroes_exactly_the_windows_pixels():
    images = torch.ones(1, 3, 16, 16)
    out = blank_windows(images, torch.tensor([[[1, 2], [0, 0]]]), grid=(4, 4), cells=2)  # 4 px per cell
    assert out.shape == (2, 3, 16, 16)
    expected = torch.ones(16, 16)
    expected[4:12, 8:16] = 0
    assert torch.equal(out[0, 0], expected) and out[1, :, :8, :8].eq(0).all() and out[1].sum() == 3 * (256 - 64)


def test_masks_follow_the_eval_transforms_resize_and_crop_then_the_grid():
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[0, 10:30, 20:40] = True
    transform = create_qpm_transform('cub', is_training=False, img_size=32)  # resize + center crop
    through = masks_through_transform(transform, mask)
    assert through.shape[-2:] == (32, 32)
    grid = masks_on_grid(through, (4, 4))
    assert grid[0, :, 0].sum() == 0 and grid[0, 1:3, 2:].all()
    with pytest.raises(ValueError, match='cannot carry masks'):
        masks_through_transform(create_qpm_transform('cub', is_training=True, img_size=32), mask)


class _PixelQPM(nn.Module):
    """A QPM-shaped model with known features on the concepts dataset: feature 0 marks the pixels that differ from
    the image's background colour in every channel (the planted shapes), feature 1 the others; it always predicts
    class 0, which uses feature 0 (``flipped``: feature 1)."""

    def __init__(self, flipped: bool = False):
        super().__init__()
        self.class_weights = torch.eye(2).flip(1) if flipped else torch.eye(2)

    def forward_with_features(self, x):
        background = x.flatten(2).median(dim=2).values[..., None, None]
        on_shape = ((x - background).abs().min(dim=1).values > 0.9).float()[:, None]  # > 0.14 in pixel units
        maps = F.adaptive_avg_pool2d(torch.cat([on_shape, 1 - on_shape], 1), 8)
        pooled = maps.mean(dim=(2, 3))
        return pooled @ self.class_weights.T + torch.tensor([1.0, 0.0]), maps, pooled


def _scan(flipped: bool):
    ds = ConceptsDataset('val', num_classes=12, images_per_class=2,
                         transform=create_qpm_transform('concepts', is_training=False))
    model = _PixelQPM(flipped)
    collector = ExplanationCollector(model, ds, faithfulness=True, max_images=16)
    forward_pass(model, create_qpm_loader(ds, 8), [collector])
    return ds, collector.result()


@pytest.fixture(scope='module')
def pixel_scan():
    return _scan(flipped=False)


def test_a_feature_on_the_planted_shapes_is_grounded_and_plausible_its_opposite_is_not(pixel_scan):
    _, result = pixel_scan
    # feature 0 fires on every planted concept, so about a third of its mass lies on the one it is matched to
    # (more than a map spread evenly would put there); feature 1 avoids every concept
    assert result.grounding[0] > 2 * result.grounding_chance[0]
    assert result.grounding[1] < result.grounding_chance[1]
    assert result.plausibility > 0.85  # the noise crosses the threshold at a few pixels off the shapes
    assert 0.2 < result.plausibility_chance < 0.7  # three shapes, grown by a cell, on an 8 x 8 grid
    assert _scan(flipped=True)[1].plausibility < 0.6  # the evidence is the background
    assert set(result.summary()) == {'plausibility', 'feature_grounding', 'faithfulness', 'faithfulness_logit'}


def test_plausibility_of_the_collector_equals_the_direct_computation(pixel_scan):
    ds, result = pixel_scan
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    logits, maps, _ = _PixelQPM().forward_with_features(x)
    masks = dataset_masks(ds, range(len(ds)), (8, 8), 'object')
    direct = plausibility(maps, torch.eye(2), logits.argmax(1), masks).mean().item()
    assert result.plausibility == pytest.approx(direct)


def test_blanking_where_a_feature_fires_lowers_it_more_than_a_random_window(pixel_scan):
    _, result = pixel_scan
    deletion = result.deletion
    assert deletion.images.tolist() == [16, 0]  # 16 chosen images, all predicted as class 0, which uses feature 0
    assert deletion.activation_peak[0] > 1.5 * deletion.activation_random[0] > 0
    assert deletion.logit_ratio[0] == pytest.approx(deletion.activation_ratio[0], rel=1e-4)  # logit 0 = f0 + 1
    assert np.isnan(deletion.activation_ratio[1])  # no image's class uses feature 1

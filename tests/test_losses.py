"""Tests of the Feature Diversity Loss (docs/METHOD.md, "Feature Diversity Loss")."""
import math

import pytest
import torch

from qpm_timm.losses import FeatureDiversityLoss, feature_diversity_loss

BETA = 0.196
EPS = 1e-5
LN3 = math.log(3.0)  # a 2x2 map with one entry ln 3 and zeros elsewhere softmaxes to (1/2, 1/6, 1/6, 1/6)


def one_peak_map(value: float, location: int, size: int = 2) -> torch.Tensor:
    """A (size, size) map that is ``value`` at the flat ``location`` and 0 elsewhere."""
    m = torch.zeros(size * size)
    m[location] = value
    return m.view(size, size)


def maps_of(*peaks) -> torch.Tensor:
    """(1, F, 2, 2) feature maps, one (value, location) peak per feature."""
    return torch.stack([one_peak_map(v, loc) for v, loc in peaks]).unsqueeze(0)


def test_equal_maps_at_different_locations_match_closed_form():
    # Both maps softmax to 1/2 at their peak and 1/6 elsewhere and have equal means (scale 1);
    # both weights are 1/(sqrt 2 + eps). Locations 0 and 3 give 1/2, locations 1 and 2 give 1/6.
    maps = maps_of((LN3, 0), (LN3, 3))
    loss = FeatureDiversityLoss(BETA)(maps, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, -1.0], [0.0, 1.0]]))
    expected = -BETA / (math.sqrt(2) + EPS) * (0.5 + 0.5 + 1 / 6 + 1 / 6)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_maps_peaking_at_the_same_location_match_closed_form_and_lose_less():
    same = maps_of((LN3, 0), (LN3, 0))
    different = maps_of((LN3, 0), (LN3, 3))
    logits, weights = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    fdl = FeatureDiversityLoss(BETA)
    loss_same = fdl(same, logits, weights)
    loss_diff = fdl(different, logits, weights)
    assert loss_same.item() == pytest.approx(-BETA / (math.sqrt(2) + EPS) * (0.5 + 3 / 6), rel=1e-6)
    assert loss_diff.item() < loss_same.item()


def test_dense_weights_use_absolute_normalised_row_and_mean_scaling():
    # Class 1 is predicted: |w| = (3, 4) / (5 + eps). Map 2 has half the spatial mean of map 1
    # (ln3/8 vs ln3/4), so its softmax is scaled by 1/2. Map 2 = ln3/2 at location 3:
    # softmax peak sqrt3/(sqrt3+3), elsewhere 1/(sqrt3+3).
    maps = maps_of((LN3, 0), (LN3 / 2, 3))
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    weights = torch.tensor([[1.0, 1.0], [3.0, -4.0], [0.0, 1.0]])
    u1, u2 = 3 / (5 + EPS), 4 / (5 + EPS)
    r3 = math.sqrt(3)
    m1 = [u1 * v for v in (1 / 2, 1 / 6, 1 / 6, 1 / 6)]
    m2 = [u2 * 0.5 * v for v in (1 / (r3 + 3), 1 / (r3 + 3), 1 / (r3 + 3), r3 / (r3 + 3))]
    expected = -BETA * sum(max(a, b) for a, b in zip(m1, m2))
    loss = FeatureDiversityLoss(BETA)(maps, logits, weights)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_binary_assignment_ignores_unassigned_features_and_averages_over_batch():
    # QPM head state: binary (C, F') assignment over selected features. Image 0 predicts class 1
    # (features 2, 3), image 1 predicts class 0 (features 0, 1). Unassigned maps add no location
    # value, but (docs/METHOD.md, "the largest spatial mean of that image's maps") they still set the scale:
    # image 0's largest mean is 5/4, so its assigned maps (mean ln3/4) are scaled by ln3/5.
    assignment = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]], dtype=torch.float32)
    image0 = maps_of((5.0, 1), (5.0, 2), (LN3, 0), (LN3, 3))
    image1 = maps_of((LN3, 2), (LN3, 2), (0.0, 0), (0.0, 0))  # assigned features peak together
    maps = torch.cat([image0, image1])
    logits = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    u = 1 / (math.sqrt(2) + EPS)
    expected = -BETA * 0.5 * (u * LN3 / 5 * (0.5 + 0.5 + 2 / 6) + u * (0.5 + 3 / 6))
    loss = FeatureDiversityLoss(BETA)(maps, logits, assignment)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    moved = maps.clone()
    moved[0, :2] = moved[0, :2].flip(-1)  # move the unassigned peaks, keep their means
    assert FeatureDiversityLoss(BETA)(moved, logits, assignment).item() == pytest.approx(expected, rel=1e-6)


def test_gradient_flows_to_feature_maps_and_dense_weights():
    torch.manual_seed(0)
    maps = torch.rand(3, 5, 4, 4, requires_grad=True)
    weights = torch.randn(4, 5, requires_grad=True)
    logits = torch.randn(3, 4)
    loss = FeatureDiversityLoss()(maps, logits, weights)
    loss.backward()
    assert torch.isfinite(maps.grad).all() and maps.grad.abs().sum() > 0
    predicted = set(logits.argmax(1).tolist())
    row_has_grad = weights.grad.abs().sum(1) > 0
    assert {i for i in range(4) if row_has_grad[i]} == predicted


def test_bfloat16_autocast_is_computed_in_float32():
    torch.manual_seed(0)
    maps32 = torch.rand(2, 6, 7, 7) * 4
    maps16 = maps32.to(torch.bfloat16)
    logits, weights = torch.randn(2, 3), torch.randn(3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = FeatureDiversityLoss()(maps16, logits.to(torch.bfloat16), weights)
    reference = feature_diversity_loss(maps16.float(), logits.to(torch.bfloat16).float(), weights)
    assert loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("maps, logits, weights", [
    (torch.rand(2, 3, 4), torch.rand(2, 2), torch.rand(2, 3)),
    (torch.rand(2, 3, 4, 4), torch.rand(3, 2), torch.rand(2, 3)),
    (torch.rand(2, 3, 4, 4), torch.rand(2, 2), torch.rand(2, 4)),
])
def test_mismatched_shapes_raise_value_error(maps, logits, weights):
    with pytest.raises(ValueError):
        FeatureDiversityLoss()(maps, logits, weights)


def test_feature_grounding_loss_matches_its_closed_form_per_image_and_batch():
    from qpm_timm.losses import FeatureGroundingLoss, feature_grounding_loss
    assignment = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    features = torch.tensor([[4.0, 2.0, 1.0, 0.0],    # class 0: on (4 + 2) / 2 = 3, off (1 + 0) / 2 = 0.5, max 4
                             [0.0, 0.0, 0.0, 0.001]])  # class 1: on 0.0005, off 0, max|f| 0.001 -> clamped to 0.01
    targets = torch.tensor([0, 1])
    first = (2 * 0.5 - 3.0) / 4.0
    second = (2 * 0.0 - 0.0005) / 0.01
    assert feature_grounding_loss(features, targets, assignment).item() == pytest.approx((first + second) / 2)
    assert FeatureGroundingLoss(3.0)(features, targets, assignment).item() == pytest.approx(1.5 * (first + second))
    # grounded features (only the class's own fire) lose less than features that fire for other classes
    assert feature_grounding_loss(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), targets[:1], assignment) < \
        feature_grounding_loss(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), targets[:1], assignment)
    with pytest.raises(ValueError, match="assignment must be"):
        feature_grounding_loss(features, targets, assignment[:, :3])

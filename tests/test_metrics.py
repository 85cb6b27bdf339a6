"""Interpretability metrics and concept recovery on inputs whose value is known by construction."""
import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from qpm_timm.metrics import (
    class_independence,
    concept_detectors,
    concept_recovery,
    contrastiveness,
    feature_correlation,
    gaussian_mixture_overlaps,
    learned_concepts,
    sid_at_k,
    structural_grounding,
)


def one_hot_maps(locations, side=4, value=3.0):
    """(1, len(locations), side, side) maps, each `value` at one flat location and 0 elsewhere."""
    maps = torch.zeros(1, len(locations), side * side)
    for f, loc in enumerate(locations):
        maps[0, f, loc] = value
    return maps.view(1, len(locations), side, side)


def softmaxed_one_hot(num_locations):
    """Softmax of a one-hot map after division by its mean |value|: (peak, elsewhere)."""
    z = math.exp(num_locations) + num_locations - 1
    return math.exp(num_locations) / z, 1.0 / z


# ----------------------------------------------------------------------------- SID@k

def test_sid_is_one_over_k_when_the_class_features_light_up_the_same_location():
    maps = one_hot_maps([5, 5, 5])
    sid = sid_at_k(maps, torch.ones(1, 3), torch.tensor([0]), k=3)
    assert sid.shape == (1,)
    assert sid.item() == pytest.approx(1 / 3, abs=1e-6)


def test_sid_matches_closed_form_for_one_hot_maps_at_distinct_locations():
    k, num_locations = 3, 16
    maps = one_hot_maps([0, 7, 12])
    peak, rest = softmaxed_one_hot(num_locations)
    expected = (k * peak + (num_locations - k) * rest) / k
    sid = sid_at_k(maps, torch.ones(1, 3), torch.tensor([0]), k=k)
    assert sid.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.0, abs=1e-5)


def test_sid_is_one_over_k_for_spatially_constant_maps():
    maps = torch.full((1, 2, 3, 3), 4.0)
    assert sid_at_k(maps, torch.ones(1, 2), torch.tensor([0]), k=2).item() == pytest.approx(0.5, abs=1e-6)


def test_sid_does_not_depend_on_the_scale_of_a_map():
    torch.manual_seed(0)
    maps = torch.rand(4, 3, 5, 5)
    weights = torch.ones(1, 3)
    preds = torch.zeros(4, dtype=torch.long)
    scaled = maps * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1)
    torch.testing.assert_close(sid_at_k(scaled, weights, preds, k=2), sid_at_k(maps, weights, preds, k=2))


def test_sid_uses_the_top_k_features_of_each_images_predicted_class():
    # features 0, 1 at distinct locations; features 2, 3 at one shared location
    maps = one_hot_maps([0, 9, 4, 4]).repeat(2, 1, 1, 1)
    weights = torch.tensor([[0.9, 0.8, 0.1, 0.0],    # class 0: top-2 = features 0, 1
                            [0.0, 0.2, 0.7, 0.5]])   # class 1: top-2 = features 2, 3
    sid = sid_at_k(maps, weights, torch.tensor([0, 1]), k=2)
    peak, rest = softmaxed_one_hot(16)
    torch.testing.assert_close(sid, torch.tensor([(2 * peak + 14 * rest) / 2, 0.5]))


def test_sid_is_nan_where_the_predicted_class_has_fewer_than_k_weights_and_accumulates_over_batches():
    torch.manual_seed(0)
    maps = torch.randn(6, 4, 3, 3)
    weights = torch.tensor([[1.0, 1.0, 1.0, 0.0],
                            [1.0, 0.0, 0.0, 1.0]])
    preds = torch.tensor([0, 1, 0, 0, 1, 0])
    whole = sid_at_k(maps, weights, preds, k=3)
    assert torch.isnan(whole[preds == 1]).all() and not torch.isnan(whole[preds == 0]).any()
    batched = torch.cat([sid_at_k(maps[:4], weights, preds[:4], k=3), sid_at_k(maps[4:], weights, preds[4:], k=3)])
    torch.testing.assert_close(batched, whole, equal_nan=True)
    assert torch.nanmean(batched).item() == pytest.approx(whole[preds == 0].mean().item())


def test_sid_rejects_mismatched_shapes_and_bad_k():
    maps = torch.rand(2, 4, 3, 3)
    with pytest.raises(ValueError, match="class_weights"):
        sid_at_k(maps, torch.ones(3, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="predictions"):
        sid_at_k(maps, torch.ones(3, 4), torch.tensor([0, 1, 2]), k=2)
    with pytest.raises(ValueError, match="k must"):
        sid_at_k(maps, torch.ones(3, 4), torch.tensor([0, 1]), k=5)
    with pytest.raises(ValueError, match="predictions must lie"):
        sid_at_k(maps, torch.ones(3, 4), torch.tensor([0, 3]), k=2)
    with pytest.raises(ValueError, match="4-D"):
        sid_at_k(maps[0], torch.ones(3, 4), torch.tensor([0, 1]), k=2)


# ----------------------------------------------------------------------------- Class-Independence

def test_class_independence_is_zero_when_every_feature_fires_for_one_class_only():
    labels = np.repeat(np.arange(3), 5)
    pooled = np.eye(3)[labels] * 2.0 + 1.0  # shifted: the min-0 shift removes the offset
    assert class_independence(pooled, labels, 3) == pytest.approx(0.0)


def test_class_independence_is_one_minus_one_over_c_for_features_spread_evenly_over_classes():
    labels = np.repeat(np.arange(4), 6)
    rng = np.random.default_rng(0)
    per_position = rng.random((6, 5))  # same activations in every class
    pooled = np.tile(per_position, (4, 1))
    assert class_independence(torch.tensor(pooled), torch.tensor(labels), 4) == pytest.approx(0.75)


def test_class_independence_takes_the_largest_class_share_of_the_shifted_mass():
    labels = np.array([0, 0, 1, 2])
    # after the shift to min 0: class 0 holds 3 of 4 units, class 1 one unit, class 2 none
    pooled = np.array([[2.0], [3.0], [2.0], [1.0]])
    assert class_independence(pooled, labels, 3) == pytest.approx(0.25)


def test_class_independence_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        class_independence(np.ones((2, 3)), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="entries"):
        class_independence(np.ones((2, 3)), np.array([0, 1, 1]), 3)
    with pytest.raises(TypeError, match="integer"):
        class_independence(np.ones((2, 3)), np.array([0.0, 1.0]), 3)


# ----------------------------------------------------------------------------- Contrastiveness

def test_contrastiveness_is_one_for_well_separated_bimodal_features():
    rng = np.random.default_rng(0)
    on_off = rng.random((400, 3)) < 0.3
    pooled = on_off * 5.0 + rng.normal(0, 0.1, (400, 3))
    assert contrastiveness(pooled) > 0.999


def test_contrastiveness_is_zero_for_a_constant_feature():
    assert contrastiveness(np.full((50, 2), 0.7)) == 0.0


def test_contrastiveness_recovers_the_overlap_of_an_equal_variance_mixture():
    # components N(0, 1) and N(3, 1): overlapping coefficient 2 * Phi(-3 / 2)
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, 3000), rng.normal(3, 1, 3000)])[:, None]
    assert contrastiveness(x) == pytest.approx(1 - 2 * NormalDist().cdf(-1.5), abs=0.02)


def test_contrastiveness_is_deterministic_and_ignores_the_qpm_normalisation():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal(2, 0.5, (300, 2))])
    first = gaussian_mixture_overlaps(x)
    np.testing.assert_array_equal(first, gaussian_mixture_overlaps(x))
    normalised = (x - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(gaussian_mixture_overlaps(normalised), first, atol=1e-3)
    assert contrastiveness(x) == pytest.approx(1 - first.mean())


def test_contrastiveness_rejects_non_finite_input():
    with pytest.raises(ValueError, match="NaN"):
        contrastiveness(np.array([[1.0], [np.nan]]))


# ----------------------------------------------------------------------------- Correlation

def test_correlation_is_one_for_duplicated_features():
    rng = np.random.default_rng(0)
    x = rng.random((20, 3))
    assert feature_correlation(np.concatenate([x, 2 * x], axis=1)) == pytest.approx(1.0)


def test_correlation_is_zero_for_orthogonal_features():
    assert feature_correlation(torch.eye(4)) == pytest.approx(0.0)


def test_correlation_is_the_mean_of_the_largest_cosine_to_another_feature():
    x = np.array([[1.0, 1.0, 0.0],
                  [0.0, 1.0, 0.0],
                  [0.0, 0.0, 1.0]])
    # cos(f0, f1) = 1/sqrt(2), the rest 0: per-feature maxima 1/sqrt(2), 1/sqrt(2), 0
    assert feature_correlation(x) == pytest.approx(math.sqrt(2) / 3)


def test_correlation_is_signed_not_absolute():
    x = np.array([[1.0, -1.0], [2.0, -2.0], [0.5, -0.5]])
    assert feature_correlation(x) == pytest.approx(0.0)


def test_correlation_with_qpm_normalisation_is_the_pearson_correlation():
    rng = np.random.default_rng(3)
    a = rng.random(50) + 3.0
    b = 0.5 * a + rng.random(50)
    x = np.stack([a, b], axis=1)
    pearson = np.corrcoef(a, b)[0, 1]
    assert feature_correlation(x, mean=x.mean(0), std=x.std(0)) == pytest.approx(pearson)
    assert feature_correlation(x) > pearson  # raw positive activations: cosine is larger


def test_correlation_rejects_a_single_feature_and_mismatched_normalisation():
    with pytest.raises(ValueError, match="at least 2"):
        feature_correlation(np.ones((5, 1)))
    with pytest.raises(ValueError, match="shape"):
        feature_correlation(np.ones((5, 3)), mean=np.zeros(2), std=np.ones(2))
    with pytest.raises(ValueError, match="both"):
        feature_correlation(np.ones((5, 3)), mean=np.zeros(3))


# ----------------------------------------------------------------------------- Structural Grounding

def test_structural_grounding_is_one_when_weights_equal_attributes():
    rng = np.random.default_rng(0)
    attributes = rng.random((12, 7))
    assert structural_grounding(attributes, attributes, top=20) == pytest.approx(1.0)
    assert structural_grounding(torch.tensor(attributes * 3.0), attributes, top=20) == pytest.approx(1.0)


def test_structural_grounding_is_the_model_similarity_over_the_most_similar_true_pairs():
    attributes = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # only classes 0 and 1 are alike
    weights = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])     # cos(w0, w1) = 1/sqrt(2)
    # top=2 takes the ordered pairs (0, 1) and (1, 0)
    assert structural_grounding(weights, attributes, top=2) == pytest.approx(1 / math.sqrt(2))


def test_structural_grounding_rejects_mismatched_classes_zero_rows_and_too_many_pairs():
    with pytest.raises(ValueError, match="classes"):
        structural_grounding(np.ones((3, 2)), np.ones((4, 2)), top=2)
    with pytest.raises(ValueError, match="all-zero"):
        structural_grounding(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), np.eye(3), top=2)
    with pytest.raises(ValueError, match="top"):
        structural_grounding(np.eye(3), np.eye(3), top=7)


# ----------------------------------------------------------------------------- concept recovery

def planted_problem(images_per_class=15, seed=0):
    """6 classes, each with a distinct pair of 4 concepts; feature k tracks concept k."""
    class_concepts = np.zeros((6, 4), dtype=bool)
    for c, pair in enumerate(itertools.combinations(range(4), 2)):
        class_concepts[c, list(pair)] = True
    labels = np.repeat(np.arange(6), images_per_class)
    rng = np.random.default_rng(seed)
    presence = class_concepts[labels] ^ (rng.random((len(labels), 4)) < 0.05)
    pooled = presence * 2.0 + rng.normal(0, 0.3, presence.shape) + 1.0
    return pooled, presence, class_concepts


def test_concept_recovery_is_one_for_the_planted_model_with_permuted_features():
    pooled, presence, class_concepts = planted_problem()
    perm = np.array([2, 0, 3, 1])  # learned feature j tracks concept perm[j]
    result = concept_recovery(torch.tensor(pooled[:, perm]), presence, class_concepts[:, perm].astype(float),
                              class_concepts)
    assert result.score == 1.0 and result.precision == 1.0 and result.recall == 1.0
    np.testing.assert_array_equal(result.matching, perm)
    assert (result.correlation > 0.8).all()
    assert "feature   0 -> c2" in result.format([f"c{k}" for k in range(4)])


def test_concept_recovery_penalises_classes_using_a_feature_of_a_concept_they_lack():
    pooled, presence, class_concepts = planted_problem()
    assignment = class_concepts.copy()
    mismatched = 0
    for c in range(2):  # these classes swap one of their concepts' feature for a foreign one
        have, lack = np.flatnonzero(assignment[c]), np.flatnonzero(~assignment[c])
        assignment[c, have[0]], assignment[c, lack[0]] = False, True
        mismatched += 1
    pairs = int(class_concepts.sum())
    result = concept_recovery(pooled, presence, assignment, class_concepts)
    assert result.score == pytest.approx((pairs - mismatched) / (pairs + mismatched))
    assert result.recall == pytest.approx((pairs - mismatched) / pairs)
    assert result.precision == pytest.approx((pairs - mismatched) / pairs)


def test_concept_detectors_find_the_channel_whose_class_profile_is_the_concept():
    class_concepts = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [0, 1]], dtype=bool)  # 6 classes, 2 concepts
    A = np.array([
        [0.1, 0.2, 0.1, 0.3, 0.2, 0.1],        # no concept
        0.9 * class_concepts[:, 0] + 0.05,     # concept 0 exactly (up to scale and shift)
        [0.1, 0.9, 0.9, 0.1, 0.8, 0.1],        # a mix of both, neither one
        -1.0 * class_concepts[:, 1],           # fires where concept 1 is absent: the opposite of a detector
    ])
    channel, r = concept_detectors(A, class_concepts)
    assert channel[0] == 1 and r[0] == pytest.approx(1.0)
    assert channel[1] == 2 and r[1] < 0.6  # concept 1 has no detector: its best channel is the mix
    with pytest.raises(ValueError, match="6 classes but A has 5 columns"):
        concept_detectors(A[:, :5], class_concepts)


def test_learned_concepts_reads_each_assigned_feature_as_its_concept_and_skips_unmatched_ones():
    assignment = np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)  # 2 classes, 3 features
    learned = learned_concepts(assignment, np.array([2, 0, -1]), 3)  # feature 2 stands for no concept
    assert learned.tolist() == [[True, False, True], [True, False, False]]
    with pytest.raises(ValueError, match="one concept per feature"):
        learned_concepts(assignment, np.array([0, 1]), 3)


def test_concept_recovery_leaves_a_constant_feature_unmatched():
    pooled, presence, class_concepts = planted_problem()
    pooled[:, 3] = 0.5
    result = concept_recovery(pooled, presence, class_concepts, class_concepts)
    assert result.matching[3] == -1
    pairs, lost = int(class_concepts.sum()), int(class_concepts[:, 3].sum())
    assert result.score == pytest.approx((pairs - lost) / pairs)


def test_concept_recovery_rejects_mismatched_shapes_and_non_binary_assignment():
    pooled, presence, class_concepts = planted_problem()
    with pytest.raises(ValueError, match="rows"):
        concept_recovery(pooled[:-1], presence, class_concepts, class_concepts)
    with pytest.raises(ValueError, match="features"):
        concept_recovery(pooled[:, :3], presence, class_concepts, class_concepts)
    with pytest.raises(ValueError, match="class_concepts must have shape"):
        concept_recovery(pooled, presence, class_concepts, class_concepts[:5])
    with pytest.raises(ValueError, match="0 and 1"):
        concept_recovery(pooled, presence, class_concepts * 0.5, class_concepts)

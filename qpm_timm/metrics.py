"""Interpretability metrics of QPM (docs/METHOD.md, "Interpretability metrics") and the
concept-recovery score of the generated concepts dataset.

Pure functions: torch tensors or numpy arrays in, Python floats (or, for SID@k, a per-image
tensor) out. The definitions follow the authors' evaluation code (ThomasNorr/QPM,
``evaluation/qpm_metrics.py`` and ``evaluation/Metrics/*``, ``evaluation/diversity.py``);
each docstring names the place. What the authors feed in:

* SID@k uses the *test* set: the feature maps of the features the head uses and the
  predicted classes.
* Class-Independence, Contrastiveness and Correlation use the *training* set passed through
  the eval transforms, with the pooled features *as the linear layer sees them*: raw for a
  dense model, ``(x - mean) / std`` for a QPM head. Class-Independence and Contrastiveness do
  not change under that per-feature affine map; Correlation does (see
  :func:`feature_correlation`'s ``mean``/``std``).

All metrics are fractions in [0, 1]; the paper reports them multiplied by 100.
"""
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

__all__ = [
    "sid_at_k", "class_independence", "contrastiveness", "gaussian_mixture_components", "gaussian_mixture_overlaps",
    "feature_correlation", "structural_grounding", "ConceptRecovery", "concept_recovery", "annotation_correlation",
    "match_features", "concept_detectors", "learned_concepts", "dilate_masks", "plausibility", "grounding_sums",
    "feature_grounding", "peak_windows", "blank_windows", "cosine_similarity",
]

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_numpy(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def _as_float64(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    x = _as_numpy(x, name, ndim)
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _as_bool(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    x = _as_numpy(x, name, ndim)
    if x.dtype != bool:
        if not np.isin(x, (0, 1)).all():
            raise ValueError(f"{name} must be boolean or hold only 0 and 1")
        x = x.astype(bool)
    return x


def _as_labels(x: ArrayLike, name: str, n: int, num_classes: int) -> np.ndarray:
    x = _as_numpy(x, name, 1)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {x.dtype}")
    if len(x) != n:
        raise ValueError(f"{name} has {len(x)} entries but the features have {n} rows")
    if n and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got range [{x.min()}, {x.max()}]")
    return x


def sid_at_k(
        feature_maps: torch.Tensor,
        class_weights: torch.Tensor,
        predictions: torch.Tensor,
        k: int = 5,
) -> torch.Tensor:
    """Per-image Spatial Inter-feature Diversity SID@k (QPM paper, SID@5; authors'
    ``MultiKCrossChannelMaxPooledSum`` with ``func="SumNMax"`` in ``evaluation/diversity.py``).

    Every map is divided by its spatial mean absolute value (clamped at 1e-5) and softmaxed
    over its H*W locations. For the predicted class of an image, its k features with the
    largest (signed) weights are taken; SID is the sum over locations of the max over those
    k maps, divided by k. It lies in [1/k, 1]: 1/k when the k maps coincide, 1 when they
    light up disjoint locations.

    Args:
        feature_maps: (N, F', H, W) maps of the features the head uses (for a QPM head the
            selected channels, raw), from the *test* set.
        class_weights: (C, F') weights of the head (QPM: the binary assignment).
        predictions: (N,) predicted class of every image (argmax of the logits).
        k: how many of the class's features to compare (5 in the paper).

    Returns:
        (N,) float tensor on the maps' device. Images whose predicted class has fewer than
        k non-zero weights get NaN (the authors skip them). Accumulate over batches by
        concatenating and taking ``torch.nanmean`` (the metric is the mean over test images).
    """
    if not isinstance(feature_maps, torch.Tensor) or feature_maps.dim() != 4:
        raise ValueError("feature_maps must be a 4-D tensor (N, F', H, W), got "
                         f"{getattr(feature_maps, 'shape', type(feature_maps).__name__)}")
    class_weights = torch.as_tensor(class_weights)
    predictions = torch.as_tensor(predictions)
    n, f, h, w = feature_maps.shape
    if class_weights.dim() != 2 or class_weights.shape[1] != f:
        raise ValueError(f"class_weights must have shape (C, {f}) to match feature_maps' {f} "
                         f"features, got {tuple(class_weights.shape)}")
    if predictions.shape != (n,):
        raise ValueError(f"predictions must have shape ({n},), got {tuple(predictions.shape)}")
    if predictions.dtype.is_floating_point or predictions.dtype == torch.bool:
        raise TypeError("predictions must hold integer class indices (argmax of the logits)")
    num_classes = class_weights.shape[0]
    if n and (predictions.min() < 0 or predictions.max() >= num_classes):
        raise ValueError(f"predictions must lie in [0, {num_classes})")
    if not 1 <= k <= f:
        raise ValueError(f"k must lie in [1, {f}] (the number of features), got {k}")

    device = feature_maps.device
    maps = feature_maps.detach().float().flatten(2)
    maps = maps / maps.abs().mean(dim=2, keepdim=True).clamp(min=1e-5)
    maps = maps.softmax(dim=2)
    weights = class_weights.detach().to(device=device, dtype=torch.float32)[predictions.to(device)]
    top = weights.topk(k, dim=1).indices  # (N, k)
    chosen = torch.gather(maps, 1, top.unsqueeze(2).expand(-1, -1, h * w))
    sid = chosen.max(dim=1).values.sum(dim=1) / k
    enough = (weights != 0).sum(dim=1) >= k
    return torch.where(enough, sid, torch.full_like(sid, float("nan")))


def class_independence(pooled: ArrayLike, labels: ArrayLike, num_classes: int) -> float:
    """Class-Independence (docs/METHOD.md; authors' ``compute_class_independence`` in
    ``evaluation/Metrics/Dependence.py``).

    Every feature is shifted to minimum 0 over the images; for every class its share of the
    feature's total activation mass is computed; 1 - mean over features of the largest
    share. 0 when every feature fires for a single class only; 1 - 1/C when a feature's mass
    is spread evenly over C classes. A constant feature has no mass and counts as share 0,
    as in the authors' code.

    Args:
        pooled: (N, F') pooled features of the training set (eval transforms).
        labels: (N,) ground-truth classes.
        num_classes: C.
    """
    x = _as_float64(pooled, "pooled", 2)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    y = _as_labels(labels, "labels", len(x), num_classes)
    if len(x) == 0:
        raise ValueError("pooled has no rows")
    x = x - x.min(axis=0)
    per_class = np.zeros((num_classes, x.shape[1]))
    np.add.at(per_class, y, x)
    share = per_class / np.maximum(x.sum(axis=0), 1e-8)
    return float(1.0 - share.max(axis=0).mean())


def gaussian_mixture_components(pooled: ArrayLike, random_state: int = 0):
    """Per feature, the means and standard deviations ``(F', 2)`` of a 2-component 1-D Gaussian mixture
    (:class:`sklearn.mixture.GaussianMixture`, sklearn's defaults, fixed ``random_state``) fitted to its
    activations, as the authors fit it for Contrastiveness; a constant feature gets both components on its
    value with standard deviation 0 (set directly, as the fit would warn)."""
    x = _as_float64(pooled, "pooled", 2)
    if len(x) < 2:
        raise ValueError(f"a 2-component mixture needs at least 2 images, got {len(x)}")
    means = np.repeat(x[:1].T, 2, axis=1)
    sigmas = np.zeros_like(means)
    for i in np.flatnonzero(np.ptp(x, axis=0) > 0):
        gmm = GaussianMixture(n_components=2, random_state=random_state).fit(x[:, i:i + 1])
        means[i] = gmm.means_.ravel()
        sigmas[i] = np.sqrt(gmm.covariances_.ravel())
    return means, sigmas


def gaussian_mixture_overlaps(pooled: ArrayLike, random_state: int = 0) -> np.ndarray:
    """Per-feature overlap of a 2-component 1-D Gaussian mixture (authors'
    ``gmm_overlap_per_feature`` in ``evaluation/Metrics/Contrastiveness.py``).

    For every feature, the mixture of :func:`gaussian_mixture_components` is fitted to its
    activations; the overlap is the overlapping coefficient of the two fitted normals,
    ``∫ min(N(μ1, σ1²), N(μ2, σ2²)) dx`` (:meth:`statistics.NormalDist.overlap`), ignoring the
    mixture weights, as the authors do. A constant feature has overlap 1 (the authors' fit
    collapses both components onto it). Returns an (F',) float64 array in [0, 1].
    """
    means, sigmas = gaussian_mixture_components(pooled, random_state)
    overlaps = np.ones(len(means))  # a constant feature: both components on one point
    for i in np.flatnonzero(sigmas.min(axis=1) > 0):
        overlaps[i] = NormalDist(means[i, 0], sigmas[i, 0]).overlap(NormalDist(means[i, 1], sigmas[i, 1]))
    return overlaps


def contrastiveness(pooled: ArrayLike, random_state: int = 0) -> float:
    """Contrastiveness (docs/METHOD.md; authors' ``1 - gmm_overlap_per_feature(...).mean()``
    in ``evaluation/qpm_metrics.py``): 1 - mean over features of
    :func:`gaussian_mixture_overlaps`. Near 1 when every feature is clearly on or off,
    0 for a constant feature (both components collapse onto the same point).

    Args:
        pooled: (N, F') pooled features of the training set (eval transforms); the value does
            not change under a per-feature affine map such as the QPM head's normalisation.
        random_state: seed of the mixture's initialisation.
    """
    return float(1.0 - gaussian_mixture_overlaps(pooled, random_state).mean())


def feature_correlation(
        pooled: ArrayLike,
        mean: Optional[ArrayLike] = None,
        std: Optional[ArrayLike] = None,
) -> float:
    """Correlation (docs/METHOD.md; authors' ``get_correlation`` in
    ``evaluation/Metrics/Correlation.py``): mean over features of the largest cosine
    similarity of its activation vector (over images) to any other feature's.

    Cosine similarity of the activations as given (not centred) and signed (not absolute);
    as in the authors' code the self-similarity is set to 0 before the max, so the per-feature
    value is never below 0. 1 for duplicated features, 0 for orthogonal ones.

    Args:
        pooled: (N, F') pooled features of the training set (eval transforms).
        mean, std: optional (F',) normalisation of a QPM head. The authors compute this metric
            on the features the linear layer sees, i.e. ``(x - mean) / std`` for a QPM head;
            pass the head's mean/std with raw ``pooled`` to get that (std clamped at 1e-6).
    """
    x = _as_float64(pooled, "pooled", 2)
    f = x.shape[1]
    if f < 2:
        raise ValueError(f"Correlation needs at least 2 features, got {f}")
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither")
    if mean is not None:
        mean = _as_float64(mean, "mean", 1)
        std = _as_float64(std, "std", 1)
        if mean.shape != (f,) or std.shape != (f,):
            raise ValueError(f"mean and std must have shape ({f},), got {mean.shape} and {std.shape}")
        x = (x - mean) / np.maximum(std, 1e-6)
    unit = x / np.maximum(np.linalg.norm(x, axis=0), 1e-8)
    sim = unit.T @ unit
    np.fill_diagonal(sim, 0.0)
    return float(sim.max(axis=0).mean())


def cosine_similarity(rows: ArrayLike) -> np.ndarray:
    """``(C, C)`` cosine similarity of the rows (e.g. CUB's class-attribute percentages); 0 for an all-zero row."""
    a = np.asarray(rows, dtype=np.float64)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    a = np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)
    return a @ a.T


def _cosine_rows(x: np.ndarray, name: str) -> np.ndarray:
    """:func:`cosine_similarity` with a zero diagonal; an all-zero row is refused."""
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(f"{name} has all-zero rows (classes {np.flatnonzero(norms == 0)[:10].tolist()}); "
                         "cosine similarity is undefined for them")
    sim = cosine_similarity(x)
    np.fill_diagonal(sim, 0.0)
    return sim


def structural_grounding(class_weights: ArrayLike, class_attributes: ArrayLike, top: int = 50) -> float:
    """Structural Grounding (docs/METHOD.md, CUB only; authors'
    ``get_structural_grounding_for_weight_matrix`` in ``evaluation/Metrics/StructuralGrounding.py``
    and ``CUB200Class.get_class_sim``).

    Class similarity from the model: cosine similarity of the rows of the class weights;
    ground truth: cosine similarity of the rows of the class-attribute matrix (CUB's
    ``class_attribute_labels_continuous.txt``); both with a zero diagonal. Over the ``top``
    entries of the full C x C ground-truth matrix with the largest similarity (ordered pairs,
    so 50 entries = 25 class pairs; ties broken by a stable sort), the metric is
    sum(model similarity) / sum(ground-truth similarity). 1 when the weights equal the
    attributes.

    Args:
        class_weights: (C, F') head weights (QPM: the binary assignment).
        class_attributes: (C, A) per-class attribute values.
        top: number of most similar ground-truth entries (50 in the paper).
    """
    w = _as_float64(class_weights, "class_weights", 2)
    a = _as_float64(class_attributes, "class_attributes", 2)
    c = w.shape[0]
    if a.shape[0] != c:
        raise ValueError(f"class_attributes has {a.shape[0]} classes but class_weights has {c}")
    if not 1 <= top <= c * (c - 1):
        raise ValueError(f"top must lie in [1, C*(C-1) = {c * (c - 1)}], got {top}")
    model_sim = _cosine_rows(w, "class_weights").ravel()
    gt_sim = _cosine_rows(a, "class_attributes").ravel()
    idx = np.argsort(-gt_sim, kind="stable")[:top]
    total_gt = gt_sim[idx].sum()
    if total_gt <= 0:
        raise ValueError("the most similar ground-truth class pairs have no positive similarity; "
                         "Structural Grounding is undefined")
    return float(model_sim[idx].sum() / total_gt)


@dataclass
class ConceptRecovery:
    """Result of :func:`concept_recovery`.

    score: Jaccard index of the learned and the planted class→concept pairs (1.0 = exactly
        the planted structure). precision / recall: |L∩G| / |L| and |L∩G| / |G|.
    matching: (F',) concept index of every feature (-1: constant feature, no match).
    correlation: (F',) Pearson correlation of each feature with its matched concept.
    """
    score: float
    precision: float
    recall: float
    matching: np.ndarray
    correlation: np.ndarray

    def format(self, concept_names: Optional[Sequence[str]] = None) -> str:
        """Readable summary: the score and one line per feature."""
        lines = [f"concept recovery {self.score:.3f} (precision {self.precision:.3f}, "
                 f"recall {self.recall:.3f})"]
        for f, (k, r) in enumerate(zip(self.matching.tolist(), self.correlation.tolist())):
            name = "-" if k < 0 else (concept_names[k] if concept_names is not None else f"concept {k}")
            lines.append(f"  feature {f:3d} -> {name} (r={r:.2f})")
        return "\n".join(lines)


def annotation_correlation(pooled: ArrayLike, annotations: ArrayLike) -> np.ndarray:
    """(F', K) Pearson correlation of every feature's pooled activation with every annotation over the images.

    ``annotations`` (N, K) may be binary (concept presence, CUB's per-image attributes) or continuous. An
    annotation that is constant over the images tracks nothing: its column is ``-inf``.
    """
    x = _as_float64(pooled, "pooled", 2)
    a = _as_float64(np.asarray(annotations, dtype=np.float64), "annotations", 2)
    if a.shape[0] != x.shape[0]:
        raise ValueError(f"annotations has {a.shape[0]} rows but pooled has {x.shape[0]} images")
    xc = x - x.mean(axis=0)
    ac = a - a.mean(axis=0)
    x_norm = np.linalg.norm(xc, axis=0)
    a_norm = np.linalg.norm(ac, axis=0)
    corr = (xc.T @ ac) / np.maximum(np.outer(x_norm, a_norm), 1e-12)
    corr[:, a_norm == 0] = -np.inf
    return corr


def match_features(pooled: ArrayLike, annotations: ArrayLike):
    """Match every feature to the annotation its activation tracks best (largest signed Pearson correlation,
    :func:`annotation_correlation`): ``(matching (F',) int, correlation (F',))``; a constant feature, or one
    without any non-constant annotation, matches nothing (-1, correlation 0). The matching of
    :func:`concept_recovery` and of the feature names of :mod:`qpm_timm.explain`."""
    x = _as_float64(pooled, "pooled", 2)
    corr = annotation_correlation(x, annotations)
    matching = corr.argmax(axis=1)
    best = corr[np.arange(len(matching)), matching]
    unmatched = (np.ptp(x, axis=0) == 0) | ~np.isfinite(best)
    matching[unmatched] = -1
    return matching, np.where(unmatched, 0.0, best)


def concept_detectors(A: ArrayLike, class_concepts: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Which stage loses a concept (docs/METHOD.md, "Which stage loses similar concepts"): for every planted concept,
    the channel whose class profile (its row of the statistics' ``A``, (F, C)) follows the concept's classes best,
    as a Pearson r over the classes (:func:`annotation_correlation` with the classes in place of images):
    ``(channel (K,) int, r (K,))``. A concept whose best r is low has no detector in the dense model, which neither
    the selection nor the assignment can make up for."""
    a = _as_float64(A, "A", 2)
    gt = _as_bool(class_concepts, "class_concepts", 2)
    if gt.shape[0] != a.shape[1]:
        raise ValueError(f"class_concepts has {gt.shape[0]} classes but A has {a.shape[1]} columns")
    corr = annotation_correlation(a.T, gt)  # (F, K)
    channel = corr.argmax(axis=0)
    return channel, corr[channel, np.arange(corr.shape[1])]


def learned_concepts(assignment: ArrayLike, matching: ArrayLike, num_concepts: int) -> np.ndarray:
    """``(C, K)`` bool: the class → concept pairs a binary ``assignment`` (C, F') gives when feature ``f`` stands for
    concept ``matching[f]`` (-1: for none, as :func:`match_features` leaves an unmatched feature)."""
    w = _as_bool(assignment, "assignment", 2)
    matching = np.asarray(matching, dtype=np.int64)
    if matching.shape != (w.shape[1],):
        raise ValueError(f"matching must hold one concept per feature ({w.shape[1]}), got shape {matching.shape}")
    feature_concept = np.zeros((len(matching), num_concepts), dtype=np.int64)
    matched = matching >= 0
    feature_concept[np.flatnonzero(matched), matching[matched]] = 1
    return (w.astype(np.int64) @ feature_concept) > 0


def concept_recovery(
        pooled: ArrayLike,
        concept_presence: ArrayLike,
        assignment: ArrayLike,
        class_concepts: ArrayLike,
) -> ConceptRecovery:
    """Concept recovery on the generated concepts dataset (docs/METHOD.md, "Interpretability metrics").

    Matches each kept feature to the concept whose presence its activation tracks best and scores
    how many ground-truth class→concept pairs the learned assignment reproduces.

    Matching: every feature f is matched to the concept k with the largest Pearson
    correlation between f's pooled activation and k's presence over the images (signed: the
    binary head adds features, so a feature stands for a concept when it is *high* where the
    concept is present). Constant features match nothing (-1).

    Score: learned pairs L = {(c, k): assignment[c, f] = 1 for some f matched to k}, planted
    pairs G = {(c, k): class_concepts[c, k]}; score = |L ∩ G| / |L ∪ G| (Jaccard). So a class
    that misses one of its concepts *or* uses a feature standing for a concept it does not
    have loses; 1.0 holds exactly when L = G. (Two features of a class matched to the same
    concept form one pair, so the class then misses a concept unless it has spare features.)

    Args:
        pooled: (N, F') pooled features (raw or normalised: correlation does not care) of the
            images whose concept presence is given, in the same order.
        concept_presence: (N, K) bool, concept k is present in image n.
        assignment: (C, F') binary class→feature assignment of the QPM head.
        class_concepts: (C, K) bool planted class→concept structure.
    """
    x = _as_float64(pooled, "pooled", 2)
    presence = _as_bool(concept_presence, "concept_presence", 2)
    w = _as_bool(assignment, "assignment", 2)
    gt = _as_bool(class_concepts, "class_concepts", 2)
    n, f = x.shape
    if presence.shape[0] != n:
        raise ValueError(f"concept_presence has {presence.shape[0]} rows but pooled has {n} images")
    if w.shape[1] != f:
        raise ValueError(f"assignment has {w.shape[1]} features but pooled has {f}")
    if gt.shape != (w.shape[0], presence.shape[1]):
        raise ValueError(f"class_concepts must have shape (C, K) = ({w.shape[0]}, {presence.shape[1]}) "
                         f"from assignment and concept_presence, got {gt.shape}")
    if not gt.any():
        raise ValueError("class_concepts is all False: there is no planted structure to recover")
    matching, best = match_features(x, presence)

    learned = learned_concepts(w, matching, gt.shape[1])
    hits = int((learned & gt).sum())
    union = int((learned | gt).sum())
    n_learned = int(learned.sum())
    return ConceptRecovery(
        score=hits / union,
        precision=hits / n_learned if n_learned else 0.0,
        recall=hits / int(gt.sum()),
        matching=matching,
        correlation=best,
    )


# ---- explanation metrics against ground-truth masks (docs/METHOD.md, "Explanation metrics") ----

def dilate_masks(masks: torch.Tensor) -> torch.Tensor:
    """``masks`` ``(..., H, W)`` bool grown by one cell in every direction (a 3 x 3 dilation)."""
    lead = masks.shape[:-2]
    x = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    return (torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1) > 0).reshape(*lead, *masks.shape[-2:])


def _check_maps_and_masks(feature_maps: torch.Tensor, masks: torch.Tensor, mask_dims: int) -> None:
    if not isinstance(feature_maps, torch.Tensor) or feature_maps.dim() != 4:
        raise ValueError("feature_maps must be a 4-D tensor (N, F', H, W), got "
                         f"{getattr(feature_maps, 'shape', type(feature_maps).__name__)}")
    masks = torch.as_tensor(masks)
    n, _, h, w = feature_maps.shape
    if masks.dim() != mask_dims or masks.shape[0] != n or tuple(masks.shape[-2:]) != (h, w):
        raise ValueError(f"masks must have {mask_dims} dimensions, {n} images and the maps' grid ({h}, {w}), got "
                         f"{tuple(masks.shape)}")


def plausibility(
        feature_maps: torch.Tensor,
        class_weights: torch.Tensor,
        predictions: torch.Tensor,
        object_masks: torch.Tensor,
) -> torch.Tensor:
    """Per-image Plausibility (DINO-QPM, its ``CUBSegmentationOverlap_gradcam_dilated``): how much of the predicted
    class's evidence lies on the object.

    The evidence map of the predicted class c, ``Σ_f w_cf · F_f``, is shifted by its minimum over the locations;
    the score is the share of its mass inside the object mask grown by a 3 x 3 dilation. An evidence map without
    mass (constant) scores 0, as in DINO-QPM's mean. Mean over the images: the metric.

    Args:
        feature_maps: (N, F', H, W) maps of the features the head uses.
        class_weights: (C, F') weights of the head.
        predictions: (N,) predicted classes.
        object_masks: (N, H, W) bool object masks on the maps' grid (:func:`qpm_timm.data.masks.masks_on_grid`).

    Returns:
        (N,) float tensor in [0, 1].
    """
    _check_maps_and_masks(feature_maps, object_masks, 3)
    maps = feature_maps.detach().float()
    weights = torch.as_tensor(class_weights).detach().to(maps.device, torch.float32)[torch.as_tensor(predictions)]
    evidence = torch.einsum('nfhw,nf->nhw', maps, weights).flatten(1)
    evidence = evidence - evidence.min(dim=1, keepdim=True).values
    inside = dilate_masks(torch.as_tensor(object_masks, device=maps.device).bool()).flatten(1)
    total = evidence.sum(dim=1)
    share = (evidence * inside).sum(dim=1) / total.clamp(min=1e-12)
    return torch.where(total > 0, share, torch.zeros_like(share))


def grounding_sums(feature_maps: torch.Tensor, concept_masks: torch.Tensor):
    """The sums of Feature grounding over a batch: ``inside (F', K)``, every feature's map mass (clipped at 0) inside
    every concept's mask, and ``total (F', K)``, its whole mass over the images that hold the concept (a non-empty
    mask); plus ``area (K,)``, the summed share of the grid each concept's mask covers, and ``count (K,)``, the
    images holding it. float64 numpy arrays; add them over batches, then :func:`feature_grounding`.

    Args:
        feature_maps: (N, F', H, W) maps of the features the head uses.
        concept_masks: (N, K, H, W) bool concept masks on the maps' grid.
    """
    _check_maps_and_masks(feature_maps, concept_masks, 4)
    maps = feature_maps.detach().double().clamp(min=0).flatten(2)  # (N, F, P)
    masks = torch.as_tensor(concept_masks, device=maps.device).flatten(2).double()  # (N, K, P)
    held = (masks.sum(dim=2) > 0).double()  # (N, K)
    inside = torch.einsum('nfp,nkp->fk', maps, masks)
    total = torch.einsum('nf,nk->fk', maps.sum(dim=2), held)
    area = (masks.mean(dim=2) * held).sum(dim=0)
    return inside.cpu().numpy(), total.cpu().numpy(), area.cpu().numpy(), held.sum(dim=0).cpu().numpy()


def feature_grounding(inside: np.ndarray, total: np.ndarray, area: np.ndarray, count: np.ndarray,
                      matching: np.ndarray):
    """Feature grounding (docs/METHOD.md, "Explanation metrics"): for every feature, the share of its map's mass
    that lies inside the mask of the concept it is matched to (:func:`match_features`), over the images that hold
    that concept; 1 when it fires only on its concept, 0 when only elsewhere. Returns ``(grounding (F',), chance
    (F',))``, ``chance`` the mean share of the grid the concept covers (what a map spread evenly scores); NaN for
    an unmatched feature, a concept no image holds or a feature without mass there.

    Args: the sums of :func:`grounding_sums` and ``matching`` (F',) concept index per feature (-1: none).
    """
    matching = np.asarray(matching, dtype=np.int64)
    f = np.arange(len(matching))
    k = np.where(matching >= 0, matching, 0)
    ok = (matching >= 0) & (np.asarray(count)[k] > 0) & (total[f, k] > 0)
    grounding = np.where(ok, inside[f, k] / np.where(ok, total[f, k], 1.0), np.nan)
    chance = np.where(ok, np.asarray(area)[k] / np.maximum(np.asarray(count)[k], 1), np.nan)
    return grounding, chance


def peak_windows(feature_maps: torch.Tensor, cells: int = 3) -> torch.Tensor:
    """(N, F', 2) top-left cell ``(row, col)`` of the ``cells x cells`` window centred on the maximum of every map,
    moved inside the grid where the maximum lies at its border (so every window has the same size)."""
    n, f, h, w = feature_maps.shape
    if not 1 <= cells <= min(h, w):
        raise ValueError(f"cells={cells} must lie in [1, {min(h, w)}] (the feature map is {h} x {w})")
    flat = feature_maps.detach().float().flatten(2).argmax(dim=2)
    rows = (flat // w - cells // 2).clamp(0, h - cells)
    cols = (flat % w - cells // 2).clamp(0, w - cells)
    return torch.stack([rows, cols], dim=2)


def blank_windows(images: torch.Tensor, windows: torch.Tensor, grid: Tuple[int, int], cells: int) -> torch.Tensor:
    """Copies of ``images`` (N, 3, H, W) with a window blanked per copy: ``windows`` (N, M, 2) top-left grid cells
    give (N * M) images (image-major), each with the ``cells x cells`` window of a ``grid`` feature map set to 0
    (the normalised data mean); the window's pixels are those of its cells (H / h by W / w each, rounded)."""
    n, _, hi, wi = images.shape
    h, w = grid
    ys = torch.arange(hi, device=images.device)
    xs = torch.arange(wi, device=images.device)
    top = torch.round(windows[..., 0].float() * hi / h).long()[..., None]  # (N, M, 1)
    bottom = torch.round((windows[..., 0] + cells).float() * hi / h).long()[..., None]
    left = torch.round(windows[..., 1].float() * wi / w).long()[..., None]
    right = torch.round((windows[..., 1] + cells).float() * wi / w).long()[..., None]
    in_rows = (ys >= top) & (ys < bottom)  # (N, M, H)
    in_cols = (xs >= left) & (xs < right)  # (N, M, W)
    keep = ~(in_rows[..., :, None] & in_cols[..., None, :])  # (N, M, H, W)
    return (images[:, None] * keep[:, :, None].to(images.dtype)).flatten(0, 1)

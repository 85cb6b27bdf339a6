"""A generated "concepts" dataset: classes defined by known sets of visual primitives.

Every class is a distinct set of ``concepts_per_class`` concepts drawn from a vocabulary of
visually distinct primitives (filled shapes, outlines, stripe and checker patches, dot clusters,
crosses, ...). An image of a class shows exactly that class's concepts (no distractors), each at
a random position and scale, in a random colour, on a noisy background of random colour. It is
the embedded default of qpm-timm: no download, and its ground truth (which concepts each class and
each image has) makes the QPM's selected features and binary assignment checkable.

Why a model must learn the concepts: object colours are drawn per instance as the background
colour plus or minus a random offset per channel (sign chosen at random), so the expected value of
every pixel is the same for every class; positions and scales are uniform and independent of the
class. A linear model on raw pixels is therefore close to chance, while a small CNN is not
(``tests/test_data_concepts.py`` checks both).

Why 48 classes by default (12 concepts, 3 per class, 100 train / 25 val images per class): each
concept is then shared by about 12 classes, so the QPM objective (Z_A sums class correlations over
the classes a feature serves) clearly favours a feature that indicates one concept over one that
indicates one class or a mix. With 24 classes (each concept in about 6) the same recipe recovered the
planted structure only in some runs (concept recovery 0.85-1.0 over seeds); with 48 it scored
0.986-1.0 in all 13 seeds tried (``benchmarks/RESULTS.md``).

Harder variants (docs/METHOD.md, "Harder planted concepts"): knobs for the concepts (families of similar shapes),
concepts per class, the number of classes, sibling classes that differ in two similar shapes, distractor shapes,
scale and rotation jitter and training-only co-occurring concept pairs (a shortcut), and named presets of them
(``CONCEPT_PRESETS``); the ``'default'`` preset draws exactly the images of the
embedded default. Every image records where it drew each shape, so the mask of every planted concept is known
(:meth:`ConceptsDataset.concept_masks`; docs/METHOD.md, "Explanation metrics").
"""
from functools import lru_cache
from math import comb
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from .constants import CONCEPTS_IMG_SIZE, CONCEPTS_NUM_CLASSES
from .masks import masks_through_transform
from .splits import is_train_split
from .transforms import batched_transform

__all__ = ['ConceptsDataset', 'CONCEPT_VOCABULARY', 'CONCEPT_PRESETS', 'SHAPE_FAMILIES', 'make_class_concepts',
           'generate_concept_images', 'concept_settings', 'make_shortcut_pairs', 'resize_image', 'shape_mask']

# CONCEPTS_MEAN / STD / NUM_CLASSES / IMG_SIZE: qpm_timm/data/constants.py
_VAL_IMAGES_PER_CLASS = 25  # the training split's number is a knob of the presets (train_images_per_class)


# ---- the vocabulary: masks on centred box coordinates u (rows), v (cols) in [-0.5, 0.5) ----

def _radius(u, v):
    return np.sqrt(u * u + v * v)


def _box(u, v, half=0.45):
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(u, v, half=0.45):
    """Upward-pointing triangle: apex at the top, base at the bottom of the box."""
    return (u >= -half) & (u <= half) & (np.abs(v) <= (u + half) * 0.5)


def _hexagon(u, v):
    """Hexagonal "radius" (a regular hexagon with flat top and bottom is ``_hexagon <= r``)."""
    return np.maximum(np.abs(u), np.abs(u) * 0.5 + np.abs(v) * 0.866)


def _octagon(u, v):
    return np.maximum(np.maximum(np.abs(u), np.abs(v)), (np.abs(u) + np.abs(v)) * 0.7071)


def _stripes(coord, n=6):
    return np.floor((coord + 0.5) * n).astype(np.int64) % 2 == 0


_SHAPES: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    'disk': lambda u, v: _radius(u, v) <= 0.45,
    'square_outline': lambda u, v: _box(u, v, 0.45) & ~_box(u, v, 0.29),
    'horizontal_stripes': lambda u, v: _box(u, v) & _stripes(u),
    'plus': lambda u, v: _box(u, v) & ((np.abs(u) <= 0.11) | (np.abs(v) <= 0.11)),
    'triangle': lambda u, v: _triangle(u, v),
    'ring': lambda u, v: (_radius(u, v) <= 0.45) & (_radius(u, v) >= 0.29),
    'vertical_stripes': lambda u, v: _box(u, v) & _stripes(v),
    'checker': lambda u, v: _box(u, v) & (_stripes(u, 4) ^ _stripes(v, 4)),
    'dot_cluster': lambda u, v: _box(u, v) & (_radius((u + 0.5) * 3 % 1 - 0.5, (v + 0.5) * 3 % 1 - 0.5) <= 0.27),
    'x_cross': lambda u, v: _box(u, v) & (np.abs(np.abs(u) - np.abs(v)) <= 0.11),
    'square': lambda u, v: _box(u, v, 0.42),
    'triangle_outline': lambda u, v: _triangle(u, v) & ~_triangle(u + 0.08, v, 0.25),
    'diagonal_stripes': lambda u, v: _box(u, v) & _stripes((u + v) / 2),
    'diamond': lambda u, v: np.abs(u) + np.abs(v) <= 0.45,
    'bullseye': lambda u, v: (_radius(u, v) <= 0.13) | ((_radius(u, v) >= 0.3) & (_radius(u, v) <= 0.45)),
    'crescent': lambda u, v: (_radius(u, v) <= 0.45) & (_radius(u, v - 0.2) >= 0.36),
    'bowtie': lambda u, v: _box(u, v) & (np.abs(u) <= np.abs(v)),
    'hash': lambda u, v: _box(u, v) & ((np.abs(np.abs(u) - 0.17) <= 0.07) | (np.abs(np.abs(v) - 0.17) <= 0.07)),
    # outlines similar to square_outline, ring and triangle_outline (the 'outlines' family of the harder presets)
    'diamond_outline': lambda u, v: (np.abs(u) + np.abs(v) <= 0.5) & (np.abs(u) + np.abs(v) > 0.32),
    'hexagon_outline': lambda u, v: (_hexagon(u, v) <= 0.45) & (_hexagon(u, v) > 0.29),
    'octagon_outline': lambda u, v: (_octagon(u, v) <= 0.45) & (_octagon(u, v) > 0.29),
    'ellipse_outline': lambda u, v: (_radius(u / 0.7, v) <= 0.45) & (_radius(u / 0.7, v) > 0.29),
}
CONCEPT_VOCABULARY: Tuple[str, ...] = tuple(_SHAPES)
# Families of similar shapes (docs/METHOD.md, "Harder planted concepts").
SHAPE_FAMILIES: Dict[str, Tuple[str, ...]] = {
    'outlines': ('square_outline', 'ring', 'triangle_outline', 'diamond_outline', 'hexagon_outline',
                 'octagon_outline', 'ellipse_outline'),
    'filled': ('disk', 'square', 'triangle', 'diamond'),
    'stripes': ('horizontal_stripes', 'vertical_stripes', 'diagonal_stripes'),
    'crosses': ('plus', 'x_cross', 'hash'),
}


def make_class_concepts(
        num_classes: int,
        num_concepts: int,
        concepts_per_class: int,
        seed: int = 0,
        siblings: Sequence[Sequence[int]] = (),
) -> np.ndarray:
    """Distinct concept sets, one per class, covering every concept; deterministic for ``seed``.

    The concepts are first dealt out in a random order to ``ceil(K / k)`` covering sets (the last
    one topped up at random), the remaining classes get random further distinct ``k``-subsets.
    With ``siblings`` (families of similar concepts, each a sequence of concept indices; docs/METHOD.md "Which stage
    loses similar concepts"), the classes come in sibling pairs instead: the same ``k - 1`` concepts plus one of two
    members of a family, the pairs of members of all families taken in turn (every pair once before any twice), so the
    labels ask for telling every two members apart; the shared parts take the concepts used least so far (ties at
    random), so every concept is shared by about as many classes as any other, in varying company.
    Returns a ``(num_classes, num_concepts)`` bool array with ``concepts_per_class`` per row.
    """
    if not 1 <= concepts_per_class <= num_concepts:
        raise ValueError(
            f'concepts_per_class={concepts_per_class} must lie in [1, num_concepts={num_concepts}].')
    n_sets = comb(num_concepts, concepts_per_class)
    if num_classes > n_sets:
        raise ValueError(
            f'num_classes={num_classes} distinct sets of {concepts_per_class} out of {num_concepts} concepts '
            f'do not exist (only {n_sets}); use fewer classes or more concepts.')
    if num_classes * concepts_per_class < num_concepts:
        raise ValueError(
            f'{num_classes} classes x {concepts_per_class} concepts cannot use all {num_concepts} concepts; '
            f'use fewer concepts or more classes.')
    if siblings:
        return _sibling_classes(num_classes, num_concepts, concepts_per_class, [tuple(f) for f in siblings], seed)
    rng = np.random.default_rng([seed, 7919])
    chosen: List[frozenset] = []
    order = rng.permutation(num_concepts)
    for start in range(0, num_concepts, concepts_per_class):
        group = set(order[start:start + concepts_per_class].tolist())
        while len(group) < concepts_per_class:
            group.add(int(rng.integers(num_concepts)))
        if frozenset(group) not in chosen:
            chosen.append(frozenset(group))
    while len(chosen) < num_classes:
        group = frozenset(rng.choice(num_concepts, concepts_per_class, replace=False).tolist())
        if group not in chosen:
            chosen.append(group)
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    class_concepts = np.zeros((num_classes, num_concepts), dtype=bool)
    for c, group in enumerate(chosen[:num_classes]):
        class_concepts[c, sorted(group)] = True
    return class_concepts


def _sibling_classes(num_classes: int, num_concepts: int, k: int, families: List[Tuple[int, ...]], seed: int
                     ) -> np.ndarray:
    """The sibling-pair classes of :func:`make_class_concepts` (``siblings``)."""
    for family in families:
        if len(set(family)) < 2 or not all(0 <= f < num_concepts for f in family):
            raise ValueError(f'siblings: every family needs two or more distinct concepts among the {num_concepts}, '
                             f'got {list(family)}.')
    if k < 2 or num_classes % 2:
        raise ValueError(f'sibling classes need concepts_per_class >= 2 and an even num_classes '
                         f'(got {k} and {num_classes}).')
    rng = np.random.default_rng([seed, 7919, 2])
    pairs = sorted({(min(a, b), max(a, b)) for family in families
                    for i, a in enumerate(family) for b in family[i + 1:]})
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    used = np.zeros(num_concepts)
    chosen: List[frozenset] = []
    for i in range(num_classes // 2):
        a, b = pairs[i % len(pairs)]
        used[[a, b]] += 1
        pool = np.array([c for c in range(num_concepts) if c not in (a, b)])
        for attempt in range(1000):
            # the least used concepts first, ties at random (and more freely after a clash with an earlier pair)
            score = used[pool] + rng.random(len(pool)) * (0.99 + attempt / 2)
            shared = set(pool[np.argsort(score, kind='stable')[:k - 1]].tolist())
            twins = (frozenset(shared | {a}), frozenset(shared | {b}))
            if not set(twins) & set(chosen):
                break
        else:
            raise ValueError(f'{num_classes} sibling classes of {k} out of {num_concepts} concepts do not exist; '
                             f'use fewer classes or more concepts.')
        used[sorted(shared)] += 2
        chosen.extend(twins)
    class_concepts = np.zeros((num_classes, num_concepts), dtype=bool)
    for c, group in enumerate(chosen):
        class_concepts[c, sorted(group)] = True
    if not class_concepts.any(0).all():
        raise ValueError(f'{num_classes} sibling classes of {k} do not use all {num_concepts} concepts; use more '
                         f'classes or fewer concepts.')
    return class_concepts


def _place_boxes(rng: np.random.Generator, n: int, img_size: int, min_frac: float, max_frac: float):
    """Random non-overlapping square boxes ``(top, left, size)``; shrinks the scale when crowded."""
    for attempt in range(200):
        shrink = 0.9 ** (attempt // 20)
        sizes = np.maximum(4, np.round(rng.uniform(min_frac, max_frac, n) * shrink * img_size)).astype(int)
        boxes = []
        for s in sizes:
            top, left = rng.integers(0, img_size - s + 1, 2)
            if any(top < t + ts + 1 and t < top + s + 1 and left < lf + ts + 1 and lf < left + s + 1
                   for t, lf, ts in boxes):
                break
            boxes.append((int(top), int(left), int(s)))
        if len(boxes) == n:
            return boxes
    raise ValueError(f'cannot place {n} concepts without overlap in a {img_size}px image; '
                     f'use a larger img_size or fewer concepts_per_class.')


@lru_cache(maxsize=None)
def _upright_mask(name: str, size: int) -> np.ndarray:
    """The ``size x size`` bool mask of concept ``name`` (computed once per shape and size, read-only)."""
    coords = (np.arange(size) + 0.5) / size - 0.5
    mask = _SHAPES[name](coords[:, None], coords[None, :])
    mask.flags.writeable = False
    return mask


def shape_mask(name: str, size: int, angle: float = 0.0) -> np.ndarray:
    """The ``size x size`` bool mask of shape ``name`` turned by ``angle`` degrees about its box centre (the
    corners of a turned shape that leave the box are cut)."""
    if angle == 0.0:
        return _upright_mask(name, size)
    return _turned_mask(name, size, angle)


@lru_cache(maxsize=65536)
def _turned_mask(name: str, size: int, angle: float) -> np.ndarray:
    coords = (np.arange(size) + 0.5) / size - 0.5
    u, v = coords[:, None], coords[None, :]
    c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    mask = _SHAPES[name](c * u + s * v, c * v - s * u)
    mask.flags.writeable = False
    return mask


def render_concepts(
        concept_names: List[str],
        img_size: int,
        rng: np.random.Generator,
        scale: Tuple[float, float] = (0.2, 0.36),
        noise_std: float = 0.07,
        rotation: float = 0.0,
) -> Tuple[np.ndarray, List[Tuple[int, int, int, float]]]:
    """One ``(img_size, img_size, 3)`` uint8 image showing the named shapes, and where each was drawn
    (``(top, left, size, angle)`` per shape, in order).

    Background: a random colour in [0.3, 0.7]^3. Every shape: a random box (scale x img_size), colour =
    background +- U(0.2, 0.3) per channel with a random sign, turned by U(-rotation, rotation) degrees (rounded) when
    ``rotation`` > 0 (no draw otherwise, so the pixels without rotation do not depend on it). Then Gaussian noise.
    """
    background = rng.uniform(0.3, 0.7, 3)
    img = rng.standard_normal((img_size, img_size, 3), dtype=np.float32)
    img *= noise_std
    img += background.astype(np.float32)
    placements = []
    for name, (top, left, size) in zip(concept_names, _place_boxes(rng, len(concept_names), img_size, *scale)):
        colour = background + rng.choice((-1.0, 1.0), 3) * rng.uniform(0.2, 0.3, 3)
        angle = float(np.round(rng.uniform(-rotation, rotation))) if rotation > 0 else 0.0  # whole degrees
        mask = shape_mask(name, size, angle)
        img[top:top + size, left:left + size][mask] += (colour - background).astype(np.float32)
        placements.append((top, left, size, angle))
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    return img.astype(np.uint8), placements


def _shortcut_extras(rng: np.random.Generator, shown: np.ndarray, pairs: Tuple[Tuple[int, int], ...],
                     probability: float) -> List[int]:
    """The shortcut partners drawn into a training image (docs/METHOD.md, "Harder planted concepts"): for every
    pair of which the image's class shows exactly one concept, the other one with ``probability``."""
    extras = []
    for a, b in pairs:
        if shown[a] != shown[b] and rng.random() < probability:
            extras.append(b if shown[a] else a)
    return extras


def resize_image(image: np.ndarray, side: int) -> np.ndarray:
    """``(H, W, C)`` uint8 resized to ``side x side`` by PIL's antialiased bilinear filter, the resampling of
    torchvision's ``Resize`` on a PIL image (unchanged where the image already has that side)."""
    if image.shape[:2] == (side, side):
        return image
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))


@lru_cache(maxsize=4)
def generate_concept_images(
        class_concepts_bytes: bytes,
        concepts: Tuple[str, ...],
        images_per_class: int,
        img_size: int,
        seed: int,
        split_id: int,
        scale: Tuple[float, float] = (0.2, 0.36),
        rotation: float = 0.0,
        distractors: Tuple[str, ...] = (),
        num_distractors: int = 0,
        shortcut_pairs: Tuple[Tuple[int, int], ...] = (),
        shortcut: float = 0.0,
        output_size: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """All images of a split, ``(C * images_per_class, H, W, 3)`` uint8, and their placements, both read-only.

    Image ``i`` (class ``i // images_per_class``) is drawn from its own seed ``(seed, split_id, i)``: its class's
    concepts in random order, then (training split only) its shortcut partners, then ``num_distractors`` shapes
    drawn from ``distractors``. ``placements`` ``(N, m, 5)`` float32 holds per drawn shape ``(shape, top, left,
    size, angle)``, ``shape`` the index into ``concepts + distractors`` (-1 pads), in pixels of the ``img_size``
    drawing. With ``output_size`` each drawing is then resized once to ``output_size`` square (:func:`resize_image`,
    what torchvision's ``Resize`` does to a PIL image), so a model fed at another side reads the images as they are.
    Cached in memory (the last 4 splits), so building the same split again in one process (validate.py after
    train.py, the tests) costs nothing.
    """
    num_concepts = len(concepts)
    class_concepts = np.frombuffer(class_concepts_bytes, dtype=bool).reshape(-1, num_concepts)
    names_all = concepts + distractors
    side = output_size or img_size
    images = np.empty((len(class_concepts) * images_per_class, side, side, 3), dtype=np.uint8)
    most = int(class_concepts.sum(1).max()) + len(shortcut_pairs) * (shortcut > 0) + num_distractors
    placements = np.full((len(images), most, 5), -1.0, dtype=np.float32)
    for index in range(len(images)):
        rng = np.random.default_rng([seed, split_id, index])
        shown = class_concepts[index // images_per_class]
        ids = np.flatnonzero(shown)
        ids = [int(ids[j]) for j in rng.permutation(len(ids))]
        if shortcut > 0 and split_id == 1:  # the training split (ConceptsDataset passes 1 + its split id)
            ids += _shortcut_extras(rng, shown, shortcut_pairs, shortcut)
        if num_distractors:
            ids += (num_concepts + rng.choice(len(distractors), num_distractors,
                                              replace=num_distractors > len(distractors))).tolist()
        drawn, where = render_concepts([names_all[k] for k in ids], img_size, rng, scale, rotation=rotation)
        images[index] = resize_image(drawn, side)
        placements[index, :len(ids), 0] = ids
        placements[index, :len(ids), 1:] = where
    images.flags.writeable = False
    placements.flags.writeable = False
    return images, placements


# ---- difficulty knobs and presets (docs/METHOD.md, "Harder planted concepts") ----

_BASE_SETTINGS: Dict[str, Any] = dict(
    num_concepts=None, num_classes=CONCEPTS_NUM_CLASSES, concepts_per_class=3, img_size=CONCEPTS_IMG_SIZE,
    concepts=None, scale=(0.2, 0.36), rotation=0.0, distractors=0, shortcut=0.0, shortcut_pairs=2, siblings=None,
    train_images_per_class=100)
_HARD_CONCEPTS = SHAPE_FAMILIES['outlines'] + ('disk', 'square', 'plus', 'x_cross', 'horizontal_stripes',
                                               'vertical_stripes', 'checker', 'dot_cluster', 'bullseye')
CONCEPT_PRESETS: Dict[str, Dict[str, Any]] = {
    # the embedded default: 12 distinct concepts, 3 per class, nothing else in the image
    'default': {},
    # more concepts and more of them per class
    'many': dict(num_concepts=18, concepts_per_class=4),
    # all seven similar outlines of SHAPE_FAMILIES['outlines'] among 12 concepts
    'outlines': dict(concepts=SHAPE_FAMILIES['outlines'] + ('disk', 'plus', 'horizontal_stripes', 'checker',
                                                            'x_cross')),
    # two distractor shapes (not concepts of any class) per image, turned up to 45 degrees, wider scale range
    'clutter': dict(distractors=2, rotation=45.0, scale=(0.16, 0.34)),
    # three concept pairs co-occur in 90 % of the training images that hold one of them (never in validation)
    'shortcut': dict(shortcut=0.9, shortcut_pairs=3),
    # 16 concepts with the seven similar outlines (hexagon, octagon and ring differ by a pixel or two at 64 px), 4 per
    # class, in sibling classes that differ only in two outlines
    'hard': dict(concepts=_HARD_CONCEPTS, concepts_per_class=4, siblings='outlines'),
    # the recovery target (docs/METHOD.md, "Which stage loses similar concepts"): 16 concepts in four families of
    # similar shapes (filled, outlined, stripes, crosses) and three more, 4 per class, 96 classes in sibling pairs that
    # differ in two members of a family, 150 training images per class: three times the images per concept of the
    # 48-class presets (docs/METHOD.md, "What the dense stage needs: images per concept")
    'similar': dict(concepts=('disk', 'square', 'triangle', 'diamond', 'square_outline', 'ring', 'triangle_outline',
                              'diamond_outline', 'horizontal_stripes', 'vertical_stripes', 'diagonal_stripes', 'plus',
                              'x_cross', 'checker', 'dot_cluster', 'bullseye'),
                    concepts_per_class=4, siblings=('filled', 'outlines', 'stripes', 'crosses'), num_classes=96,
                    train_images_per_class=150),
    # everything at once: hard's concepts, a distractor, rotation, a smaller scale, shortcuts
    'hardest': dict(concepts=_HARD_CONCEPTS, concepts_per_class=4, distractors=1, rotation=30.0, scale=(0.16, 0.3),
                    shortcut=0.8, shortcut_pairs=2),
}


def concept_settings(preset: str = 'default', **overrides) -> Dict[str, Any]:
    """The generator settings of ``preset`` with ``overrides`` (None: the preset's value): the concept names
    (``concepts``, first ``num_concepts`` of the given list or of ``CONCEPT_VOCABULARY``) and every knob checked."""
    if preset not in CONCEPT_PRESETS:
        raise ValueError(f'unknown concepts preset {preset!r}; choose one of {sorted(CONCEPT_PRESETS)}.')
    settings = {**_BASE_SETTINGS, **CONCEPT_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    vocabulary = tuple(settings['concepts'] or CONCEPT_VOCABULARY)
    unknown = [name for name in vocabulary if name not in _SHAPES]
    if unknown:
        raise ValueError(f'unknown concepts {unknown}; the shapes are CONCEPT_VOCABULARY {list(CONCEPT_VOCABULARY)}.')
    if len(set(vocabulary)) != len(vocabulary):
        raise ValueError(f'concepts {list(vocabulary)} name a shape twice.')
    num_concepts = settings['num_concepts'] or (len(vocabulary) if settings['concepts'] else 12)
    if not 1 <= num_concepts <= len(vocabulary):
        where = 'the given concepts' if settings['concepts'] else 'the size of CONCEPT_VOCABULARY'
        raise ValueError(f'num_concepts={num_concepts} must lie in [1, {len(vocabulary)}] ({where}).')
    settings['concepts'] = vocabulary[:num_concepts]
    settings['num_concepts'] = num_concepts
    low, high = settings['scale'] = tuple(float(x) for x in settings['scale'])
    if not 0 < low <= high <= 0.9:
        raise ValueError(f'scale={settings["scale"]} must be (low, high) with 0 < low <= high <= 0.9 '
                         '(fractions of the image side).')
    if not 0 <= settings['rotation'] <= 180:
        raise ValueError(f'rotation={settings["rotation"]} must lie in [0, 180] degrees.')
    if settings['train_images_per_class'] < 1:
        raise ValueError(f'train_images_per_class={settings["train_images_per_class"]} must be >= 1.')
    if settings['distractors'] < 0:
        raise ValueError(f'distractors={settings["distractors"]} must be >= 0.')
    if settings['distractors'] and not set(CONCEPT_VOCABULARY) - set(settings['concepts']):
        raise ValueError('distractors need shapes that are not concepts; use fewer concepts.')
    if not 0 <= settings['shortcut'] <= 1:
        raise ValueError(f'shortcut={settings["shortcut"]} must be a probability in [0, 1].')
    if settings['siblings']:
        names = settings['siblings']
        settings['siblings'] = names = (names,) if isinstance(names, str) else tuple(names)
        for name in names:
            family = SHAPE_FAMILIES.get(name)
            if family is None:
                raise ValueError(f'siblings={name!r} must name a family of SHAPE_FAMILIES {sorted(SHAPE_FAMILIES)}.')
            if len(set(family) & set(settings['concepts'])) < 2:
                raise ValueError(f'siblings={name!r}: fewer than two of its shapes {list(family)} are concepts; add '
                                 f'them with concepts=[...].')
    if settings['shortcut'] and not 1 <= settings['shortcut_pairs'] <= num_concepts // 2:
        raise ValueError(f'shortcut_pairs={settings["shortcut_pairs"]} must lie in [1, {num_concepts // 2}] '
                         f'(disjoint pairs of the {num_concepts} concepts).')
    return settings


def make_shortcut_pairs(num_concepts: int, pairs: int, seed: int) -> Tuple[Tuple[int, int], ...]:
    """The ``pairs`` disjoint concept pairs that co-occur in training (a random pairing, fixed by ``seed``)."""
    order = np.random.default_rng([seed, 104729]).permutation(num_concepts)
    return tuple((int(order[2 * i]), int(order[2 * i + 1])) for i in range(pairs))


class ConceptsDataset(Dataset):
    """Generated images whose classes are distinct sets of known concepts (QPM's ground truth).

    Args:
        split: ``'train'`` or ``'val'`` (any name of :mod:`.splits`: ``'test'``, ``'eval'``... mean ``'val'``);
            the splits share the class definitions and have disjoint image seeds.
        preset: named difficulty (``CONCEPT_PRESETS``; ``'default'`` is the embedded default), which the
            arguments below override where given.
        num_concepts: size K of the vocabulary used (the first K of ``concepts``, else of ``CONCEPT_VOCABULARY``).
        num_classes: number of classes C; each is a distinct set of concepts.
        concepts_per_class: k, concepts per class (all of them are drawn in every image).
        img_size: side of the square drawings in pixels (the preset's: 64).
        output_size: side of the images the dataset holds, when not ``img_size``: each drawing is resized once,
            as it is generated (:func:`resize_image`), instead of by the transform at every read;
            ``create_qpm_split`` sets it to the transform's side (``--img-size``).
        images_per_class: images per class; default the preset's ``train_images_per_class`` (100; ``similar``: 150)
            for train, 25 for val.
        seed: fixes the class definitions and every pixel.
        concepts: the concept shapes by name (e.g. a family of ``SHAPE_FAMILIES``).
        scale: (low, high) side of a shape's box as a fraction of the image side.
        rotation: every shape turned by up to this many degrees either way.
        distractors: shapes per image that are no concept (drawn from the rest of ``CONCEPT_VOCABULARY``).
        shortcut: in the training split, each of ``shortcut_pairs`` concept pairs co-occurs with this probability
            where the class holds only one of the pair (the shortcut; validation images never show it).
        siblings: a family of ``SHAPE_FAMILIES`` or a list of them (``'outlines'``; False: none): the classes come in
            pairs that differ only in two members of a family (:func:`make_class_concepts`), so the labels ask for
            telling them apart.
        masks: samples are ``(image, target, masks)``, ``masks`` ``(K, H, W)`` bool of every concept as the
            image shows it (:meth:`concept_masks`, through the transform's geometry); off by default (speed).
        transform: applied to the PIL image in ``__getitem__``.
        target_transform: applied to the integer target.

    Attributes (ground truth):
        class_concepts: ``(C, K)`` bool, which concepts define each class.
        concept_presence: ``(N, K)`` bool, which concepts image ``i`` shows (its class's row, plus its shortcut
            partners in the training split).
        classes: class names (``'disk+ring+plus'``), concept_names, targets (list of int),
        images: ``(N, H, W, 3)`` uint8, read-only, see ``generate_concept_images``.
    """

    def __init__(
            self,
            split: str = 'train',
            num_concepts: Optional[int] = None,
            num_classes: Optional[int] = None,
            concepts_per_class: Optional[int] = None,
            img_size: Optional[int] = None,
            images_per_class: Optional[int] = None,
            seed: int = 0,
            transform: Optional[Callable] = None,
            target_transform: Optional[Callable] = None,
            preset: str = 'default',
            concepts: Optional[Sequence[str]] = None,
            scale: Optional[Sequence[float]] = None,
            rotation: Optional[float] = None,
            distractors: Optional[int] = None,
            shortcut: Optional[float] = None,
            shortcut_pairs: Optional[int] = None,
            siblings: Union[None, str, Sequence[str]] = None,
            masks: bool = False,
            output_size: Optional[int] = None,
    ):
        split_id = 0 if is_train_split(split) else 1
        settings = concept_settings(
            preset, num_concepts=num_concepts, num_classes=num_classes, concepts_per_class=concepts_per_class,
            img_size=img_size, concepts=concepts, scale=scale, rotation=rotation, distractors=distractors,
            shortcut=shortcut, shortcut_pairs=shortcut_pairs, siblings=siblings)
        img_size, num_classes = settings['img_size'], settings['num_classes']
        if img_size < 16:
            raise ValueError(f'img_size={img_size} is too small to draw concepts; use >= 16.')
        if output_size is not None and output_size < 1:
            raise ValueError(f'output_size={output_size} must be >= 1 (the side of the images, in pixels).')
        if images_per_class is None:
            images_per_class = settings['train_images_per_class'] if split_id == 0 else _VAL_IMAGES_PER_CLASS
        if images_per_class < 1:
            raise ValueError(f'images_per_class={images_per_class} must be >= 1.')
        self.split = 'train' if split_id == 0 else 'val'
        self.seed = seed
        self.img_size = img_size
        self.output_size = output_size or img_size
        self.preset = preset
        self.settings = settings
        self.masks = masks
        self.transform = transform
        self.target_transform = target_transform
        self.concept_names: List[str] = list(settings['concepts'])
        num_concepts = len(self.concept_names)
        siblings = [[self.concept_names.index(n) for n in SHAPE_FAMILIES[name] if n in self.concept_names]
                    for name in settings['siblings'] or ()]
        self.class_concepts = make_class_concepts(num_classes, num_concepts, settings['concepts_per_class'], seed,
                                                  siblings)
        self.classes: List[str] = [
            '+'.join(self.concept_names[k] for k in np.flatnonzero(row)) for row in self.class_concepts]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets: List[int] = np.repeat(np.arange(num_classes), images_per_class).tolist()
        distractor_names = tuple(n for n in CONCEPT_VOCABULARY if n not in self.concept_names)
        self.images, self.placements = generate_concept_images(
            self.class_concepts.tobytes(), tuple(self.concept_names), images_per_class, img_size, seed,
            1 + split_id, settings['scale'], float(settings['rotation']),
            distractor_names if settings['distractors'] else (), int(settings['distractors']),
            make_shortcut_pairs(num_concepts, settings['shortcut_pairs'], seed) if settings['shortcut'] else (),
            float(settings['shortcut']), self.output_size)
        shapes = self.placements[..., 0].astype(np.int64)
        self.concept_presence = np.zeros((len(self.targets), num_concepts), dtype=bool)
        rows, slots = np.nonzero((shapes >= 0) & (shapes < num_concepts))
        self.concept_presence[rows, shapes[rows, slots]] = True

    def concept_masks(self, indices: Sequence[int]) -> np.ndarray:
        """``(n, K, H, W)`` bool: where every concept is drawn in images ``indices`` (all False for a concept the
        image does not show), at the images' side (docs/METHOD.md, "Explanation metrics"). Drawings resized to
        ``output_size`` resize their masks as an eval transform's resize does (``masks_through_transform``)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        size = self.img_size
        out = np.zeros((len(indices), len(self.concept_names), size, size), dtype=bool)
        for row, index in enumerate(indices):
            for shape, top, left, side, angle in self.placements[index]:
                if 0 <= shape < len(self.concept_names):
                    top, left, side = int(top), int(left), int(side)
                    out[row, int(shape), top:top + side, left:left + side] |= shape_mask(
                        self.concept_names[int(shape)], side, float(angle))
        if self.output_size == size:
            return out
        return masks_through_transform(T.Resize((self.output_size, self.output_size)), torch.from_numpy(out)).numpy()

    def object_masks(self, indices: Sequence[int]) -> np.ndarray:
        """``(n, H, W)`` bool: the object of each image, the union of its planted concepts (not the distractors)."""
        return self.concept_masks(indices).any(axis=1)

    def __len__(self) -> int:
        return len(self.targets)

    def _sample_masks(self, indices: List[int]) -> List[torch.Tensor]:
        return list(masks_through_transform(self.transform, torch.from_numpy(self.concept_masks(indices))))

    def __getitems__(self, indices: List[int]) -> list:
        """A batch of samples at once (torch's DataLoader calls this instead of ``__getitem__`` per image): the
        images go through the transform together where it has a batched equivalent that gives the same tensors
        (:func:`~qpm_timm.data.transforms.batched_transform`: the training shift + flip and the eval
        normalisation at the rendering size), else one by one."""
        batch = batched_transform(self.transform, self.images.shape[1:3])
        if batch is None or self.masks:
            return [self[i] for i in indices]
        images = batch(torch.from_numpy(self.images[np.asarray(indices, dtype=np.int64)]))
        targets = [self.targets[i] for i in indices]
        if self.target_transform is not None:
            targets = [self.target_transform(t) for t in targets]
        return list(zip(images.unbind(0), targets))

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        if self.masks:
            return img, target, self._sample_masks([index])[0]
        return img, target

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(split={self.split!r}, preset={self.preset!r}, '
                f'num_concepts={len(self.concept_names)}, num_classes={len(self.classes)}, '
                f'concepts_per_class={int(self.class_concepts[0].sum())}, img_size={self.img_size}, '
                f'images={len(self)}, seed={self.seed})')

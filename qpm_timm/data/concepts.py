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
"""
from functools import lru_cache
from math import comb
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..timing import timed
from .splits import is_train_split

__all__ = ['ConceptsDataset', 'CONCEPT_VOCABULARY', 'CONCEPTS_MEAN', 'CONCEPTS_STD', 'CONCEPTS_NUM_CLASSES',
           'CONCEPTS_IMG_SIZE', 'make_class_concepts', 'generate_concept_images']

# Per-channel pixel mean/std of the default dataset (measured over the default train split,
# 0..1 scale; colours are symmetric around 0.5 by construction).
CONCEPTS_MEAN = (0.5, 0.5, 0.5)
CONCEPTS_STD = (0.155, 0.155, 0.155)
# Default number of classes (why 48: module docstring) and image side in pixels.
CONCEPTS_NUM_CLASSES = 48
CONCEPTS_IMG_SIZE = 64

_DEFAULT_IMAGES_PER_CLASS = {0: 100, 1: 25}


# ---- the vocabulary: masks on centred box coordinates u (rows), v (cols) in [-0.5, 0.5) ----

def _radius(u, v):
    return np.sqrt(u * u + v * v)


def _box(u, v, half=0.45):
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(u, v, half=0.45):
    """Upward-pointing triangle: apex at the top, base at the bottom of the box."""
    return (u >= -half) & (u <= half) & (np.abs(v) <= (u + half) * 0.5)


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
}
CONCEPT_VOCABULARY: Tuple[str, ...] = tuple(_SHAPES)


def make_class_concepts(
        num_classes: int,
        num_concepts: int,
        concepts_per_class: int,
        seed: int = 0,
) -> np.ndarray:
    """Distinct concept sets, one per class, covering every concept; deterministic for ``seed``.

    The concepts are first dealt out in a random order to ``ceil(K / k)`` covering sets (the last
    one topped up at random), the remaining classes get random further distinct ``k``-subsets.
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


def _place_boxes(rng: np.random.Generator, n: int, img_size: int, min_frac: float, max_frac: float):
    """Random non-overlapping square boxes ``(top, left, size)``; shrinks the scale when crowded."""
    for attempt in range(200):
        shrink = 0.9 ** (attempt // 20)
        sizes = np.maximum(4, np.round(rng.uniform(min_frac, max_frac, n) * shrink * img_size)).astype(int)
        boxes = []
        for s in sizes:
            top, left = rng.integers(0, img_size - s + 1, 2)
            if any(top < t + ts + 1 and t < top + s + 1 and left < l + ts + 1 and l < left + s + 1
                   for t, l, ts in boxes):
                break
            boxes.append((int(top), int(left), int(s)))
        if len(boxes) == n:
            return boxes
    raise ValueError(f'cannot place {n} concepts without overlap in a {img_size}px image; '
                     f'use a larger img_size or fewer concepts_per_class.')


@lru_cache(maxsize=None)
def _mask(name: str, size: int) -> np.ndarray:
    """The ``size x size`` bool mask of concept ``name`` (computed once per shape and size, read-only)."""
    coords = (np.arange(size) + 0.5) / size - 0.5
    mask = _SHAPES[name](coords[:, None], coords[None, :])
    mask.flags.writeable = False
    return mask


def render_concepts(
        concept_names: List[str],
        img_size: int,
        rng: np.random.Generator,
        scale: Tuple[float, float] = (0.2, 0.36),
        noise_std: float = 0.07,
) -> np.ndarray:
    """One ``(img_size, img_size, 3)`` uint8 image showing the named concepts.

    Background: a random colour in [0.3, 0.7]^3. Every concept: a random box (scale x img_size),
    colour = background +- U(0.2, 0.3) per channel with a random sign. Then Gaussian pixel noise.
    """
    background = rng.uniform(0.3, 0.7, 3)
    img = rng.standard_normal((img_size, img_size, 3), dtype=np.float32)
    img *= noise_std
    img += background.astype(np.float32)
    for name, (top, left, size) in zip(concept_names, _place_boxes(rng, len(concept_names), img_size, *scale)):
        mask = _mask(name, size)
        colour = background + rng.choice((-1.0, 1.0), 3) * rng.uniform(0.2, 0.3, 3)
        img[top:top + size, left:left + size][mask] += (colour - background).astype(np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    return img.astype(np.uint8)


@lru_cache(maxsize=4)
def generate_concept_images(
        class_concepts_bytes: bytes,
        num_concepts: int,
        images_per_class: int,
        img_size: int,
        seed: int,
        split_id: int,
) -> np.ndarray:
    """All images of a split, ``(C * images_per_class, H, W, 3)`` uint8, read-only.

    Image ``i`` (class ``i // images_per_class``) is drawn from its own seed ``(seed, split_id, i)``,
    with its class's concepts in random order. Cached in memory (the last 4 splits), so building
    the same split again in one process (validate.py after train.py, the tests) costs nothing.
    """
    class_concepts = np.frombuffer(class_concepts_bytes, dtype=bool).reshape(-1, num_concepts)
    images = np.empty((len(class_concepts) * images_per_class, img_size, img_size, 3), dtype=np.uint8)
    with timed('data_generation'):
        for index in range(len(images)):
            rng = np.random.default_rng([seed, split_id, index])
            names = [CONCEPT_VOCABULARY[k] for k in np.flatnonzero(class_concepts[index // images_per_class])]
            images[index] = render_concepts([names[j] for j in rng.permutation(len(names))], img_size, rng)
    images.flags.writeable = False
    return images


class ConceptsDataset(Dataset):
    """Generated images whose classes are distinct sets of known concepts (QPM's ground truth).

    Args:
        split: ``'train'`` or ``'val'`` (any name of :mod:`.splits`: ``'test'``, ``'eval'``... mean ``'val'``);
            the splits share the class definitions and have disjoint image seeds.
        num_concepts: size K of the vocabulary used (the first K of ``CONCEPT_VOCABULARY``).
        num_classes: number of classes C; each is a distinct set of concepts.
        concepts_per_class: k, concepts per class (all of them are drawn in every image).
        img_size: side of the square images in pixels.
        images_per_class: images per class; default 100 for train, 25 for val.
        seed: fixes the class definitions and every pixel.
        transform: applied to the PIL image in ``__getitem__``.
        target_transform: applied to the integer target.

    Attributes (ground truth):
        class_concepts: ``(C, K)`` bool, which concepts define each class.
        concept_presence: ``(N, K)`` bool, which concepts image ``i`` shows (its class's row; this
            dataset draws no distractors).
        classes: class names (``'disk+ring+plus'``), concept_names, targets (list of int),
        images: ``(N, H, W, 3)`` uint8, read-only, see ``generate_concept_images``.
    """

    def __init__(
            self,
            split: str = 'train',
            num_concepts: int = 12,
            num_classes: int = CONCEPTS_NUM_CLASSES,
            concepts_per_class: int = 3,
            img_size: int = CONCEPTS_IMG_SIZE,
            images_per_class: Optional[int] = None,
            seed: int = 0,
            transform: Optional[Callable] = None,
            target_transform: Optional[Callable] = None,
    ):
        split_id = 0 if is_train_split(split) else 1
        if not 1 <= num_concepts <= len(CONCEPT_VOCABULARY):
            raise ValueError(f'num_concepts={num_concepts} must lie in [1, {len(CONCEPT_VOCABULARY)}] '
                             f'(the size of CONCEPT_VOCABULARY).')
        if img_size < 16:
            raise ValueError(f'img_size={img_size} is too small to draw concepts; use >= 16.')
        if images_per_class is None:
            images_per_class = _DEFAULT_IMAGES_PER_CLASS[split_id]
        if images_per_class < 1:
            raise ValueError(f'images_per_class={images_per_class} must be >= 1.')
        self.split = 'train' if split_id == 0 else 'val'
        self.seed = seed
        self.img_size = img_size
        self.transform = transform
        self.target_transform = target_transform
        self.concept_names: List[str] = list(CONCEPT_VOCABULARY[:num_concepts])
        self.class_concepts = make_class_concepts(num_classes, num_concepts, concepts_per_class, seed)
        self.classes: List[str] = [
            '+'.join(self.concept_names[k] for k in np.flatnonzero(row)) for row in self.class_concepts]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets: List[int] = np.repeat(np.arange(num_classes), images_per_class).tolist()
        self.concept_presence = self.class_concepts[self.targets]
        self.images = generate_concept_images(
            self.class_concepts.tobytes(), num_concepts, images_per_class, img_size, seed, 1 + split_id)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: List[int]) -> list:
        """A batch of samples at once (torch's DataLoader calls this instead of ``__getitem__`` per image): the
        images go through the transform together where it has a batched equivalent that gives the same tensors
        (:func:`~qpm_timm.data.transforms.batched_transform`: the training shift + flip and the eval
        normalisation at the rendering size), else one by one."""
        from .transforms import batched_transform  # here: transforms.py imports this module's constants
        batch = batched_transform(self.transform, self.images.shape[1:3])
        if batch is None:
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
        return img, target

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(split={self.split!r}, num_concepts={len(self.concept_names)}, '
                f'num_classes={len(self.classes)}, concepts_per_class={int(self.class_concepts[0].sum())}, '
                f'img_size={self.img_size}, images={len(self)}, seed={self.seed})')

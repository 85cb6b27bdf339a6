"""Seeded QPM instances with the structure of a trained CNN's statistics (tests and benchmarks).

Classes are sparse combinations of shared latent concepts; every backbone feature responds to one
or two concepts (many features are weak or dead); each image shows most concepts of its class plus
a few random ones. Pooled activations are ReLU(concept response + noise). A is the Pearson
correlation of each pooled feature with each one-hot class label, normalised to ``max|A| = 1``
(docs/METHOD.md, "Pipeline", stage 2); B is random, zero-mean, scaled to ``max|B| = 0.1 * sqrt(10)``.
"""
from typing import Tuple

import numpy as np

__all__ = ["synthetic_statistics"]


def synthetic_statistics(num_features: int, num_classes: int, images_per_class: int = 30,
                         concepts_per_class: int = 6, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Return (A (F, C), B (F,)) for a seeded synthetic CNN."""
    rng = np.random.default_rng(seed)
    F, C = num_features, num_classes
    K = max(2 * concepts_per_class, int(2 * C ** 0.75))
    popularity = rng.pareto(1.5, size=K) + 1.0
    popularity /= popularity.sum()
    class_concepts = np.zeros((C, K), dtype=bool)
    for c in range(C):
        class_concepts[c, rng.choice(K, size=concepts_per_class, replace=False, p=popularity)] = True
    # feature <- concept loadings: 1-2 concepts each, a quarter of the features weak/dead
    load = np.zeros((K, F))
    for f in range(F):
        m = rng.integers(1, 3)
        load[rng.choice(K, size=m, replace=False), f] = rng.gamma(2.0, 1.0, size=m)
    load[:, rng.random(F) < 0.25] *= 0.1
    N = C * images_per_class
    labels = np.repeat(np.arange(C), images_per_class)
    present = (rng.random((N, K)) < 0.8) & class_concepts[labels]
    present |= rng.random((N, K)) < 0.03
    x = np.maximum(present.astype(float) * rng.uniform(0.5, 1.5, size=(N, K)) @ load
                   + 0.5 * rng.standard_normal((N, F)), 0.0)
    # Pearson correlation of x_f with the one-hot label of class c, closed form for a binary label
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0
    class_mean = np.zeros((C, F))
    np.add.at(class_mean, labels, x)
    class_mean /= images_per_class
    p = 1.0 / C
    A = ((class_mean - mu) / sd * np.sqrt(p / (1 - p))).T
    A /= np.abs(A).max()
    B = rng.standard_normal(F)
    B -= B.mean()
    B *= 0.1 * np.sqrt(10) / np.abs(B).max()
    return A, B

""" Contrastive class pairs: two classes whose feature sets differ in a single feature each.

In a QPM every class uses ``n_wc`` features, so two classes that share ``n_wc - 1`` of them are told apart
by exactly one feature each (the QPM paper's "contrastive class representations"; the authors draw such
pairs; docs/EXPLANATIONS.md). For an image ``x`` the logit difference of classes ``a`` and ``b`` is
``sum_f z_f(x) (W[a, f] - W[b, f])`` with ``z_f`` the normalised activations: shared features cancel, and
the per-feature terms are each feature's contribution to the difference.
"""
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ['contrastive_pairs', 'spread_pairs', 'pair_features', 'difference_contributions', 'resolve_class']


def contrastive_pairs(assignment: torch.Tensor) -> List[Tuple[int, int]]:
    """All class pairs ``(a, b)``, ``a < b``, whose binary rows share ``n_wc - 1`` features."""
    w = torch.as_tensor(assignment).float().cpu()
    n_wc = int(w[0].sum())
    shared = (w @ w.T).round().long()
    a, b = torch.nonzero(torch.triu(shared == n_wc - 1, diagonal=1), as_tuple=True)
    return list(zip(a.tolist(), b.tolist()))


def spread_pairs(pairs: Sequence[Tuple[int, int]], limit: int) -> List[Tuple[int, int]]:
    """Up to ``limit`` of ``pairs``, first those whose classes appear in no pair taken before (so a few
    pictures show many classes), then the rest in order."""
    taken, seen = [], set()
    for pair in pairs:
        if len(taken) < limit and not seen.intersection(pair):
            taken.append(tuple(pair))
            seen.update(pair)
    rest = [tuple(p) for p in pairs if tuple(p) not in taken]
    return taken + rest[:max(0, limit - len(taken))]


def pair_features(assignment: torch.Tensor, a: int, b: int) -> Tuple[List[int], List[int], List[int]]:
    """Features of class ``a`` only, shared, of ``b`` only (the authors' column order)."""
    w = torch.as_tensor(assignment).cpu() > 0
    only_a = torch.nonzero(w[a] & ~w[b]).flatten().tolist()
    shared = torch.nonzero(w[a] & w[b]).flatten().tolist()
    only_b = torch.nonzero(w[b] & ~w[a]).flatten().tolist()
    return only_a, shared, only_b


def difference_contributions(normalised: torch.Tensor, assignment: torch.Tensor, a: int, b: int) -> np.ndarray:
    """``(n_f*,)`` per-feature terms ``z_f (W[a, f] - W[b, f])`` of ``logit_a - logit_b`` for one image's
    normalised activations ``z`` (module docstring); they sum to the logit difference."""
    w = torch.as_tensor(assignment).float().cpu()
    return (torch.as_tensor(normalised).float().cpu() * (w[a] - w[b])).numpy()


def resolve_class(spec: Union[int, str], class_names: Sequence[str]) -> int:
    """A class index from an index or a class name; a clear error naming the choices otherwise."""
    n = len(class_names)
    text = str(spec).strip()
    if text.lstrip('-').isdigit():
        index = int(text)
        if not 0 <= index < n:
            raise ValueError(f'class index {index} does not exist: the model has {n} classes (0..{n - 1}).')
        return index
    lowered = [name.lower() for name in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    examples = ', '.join(repr(name) for name in class_names[:5])
    raise ValueError(f'class {text!r} does not exist; give an index in 0..{n - 1} or a class name such as '
                     f'{examples}.')

"""The regularisation paths of the baselines, computed by the glm-saga package (MadryLab, Wong et al. 2021).

glm-saga's :func:`glm_saga.elasticnet.glm_saga` walks a path of ``k`` elastic-net penalties, log-spaced from
``lambda_max / max(0.001, alpha)`` down to ``epsilon`` times that, each point fitted by proximal SAGA
(:func:`glm_saga.elasticnet.train_saga`) warm-started from the previous one. Its interface does not fit a library
call as it stands: it prints every point (and, through ``maximum_reg_loader``, a line of its own), writes files
when asked to keep the path, needs loaders yielding ``(X, y, index)`` and always walks all ``k`` points. So
:func:`regularization_path` walks the same path itself with the package's own pieces -- ``maximum_reg`` for
``lambda_max``, ``train_saga`` for every point (its log sent to this
module's logger, its implicit-softmax warning silenced), on the ``(X, y, index)`` batches it reads
(:class:`IndexedBatches`) -- and hands every point to a ``stop`` test, so that a
baseline that needs only the sparse end of the path stops there. Nothing of the elastic net is re-implemented.
"""
import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import torch
from torch import nn

__all__ = ['PathPoint', 'PathSettings', 'regularization_path', 'import_glm_saga', 'GROUP_SELECTION', 'ELASTIC_NET']

_logger = logging.getLogger(__name__)


def import_glm_saga():
    """glm-saga's ``elasticnet`` module, or an ImportError naming the extra that installs it."""
    try:
        from glm_saga import elasticnet
    except ImportError as e:
        raise ImportError('the baselines (sldd, qsenn, glm) need the glm-saga package: pip install '
                          '"qpm-timm[baselines]" (or pip install glm-saga).') from e
    return elasticnet


@dataclass(frozen=True)
class PathSettings:
    """glm-saga's arguments of one path: ``alpha`` (L1 share), ``lr``, ``max_epochs`` per point, ``tol``,
    ``lookbehind`` (epochs without progress before a point stops), ``k`` points, ``epsilon`` (the smallest penalty
    as a fraction of the largest), ``group`` (a feature's weights over all classes as one group), batch size."""
    alpha: float
    lr: float = 0.1
    max_epochs: int = 2000
    tol: float = 1e-4
    lookbehind: int = 5
    k: int = 100
    epsilon: float = 1e-3
    group: bool = False
    batch_size: int = 256

    def replace(self, **changes) -> 'PathSettings':
        return PathSettings(**{**self.__dict__, **changes})


# The authors' settings (docs/METHOD.md, "Baselines"): the group-sparse path of SLDD's feature selection, and the
# elastic-net path on the selected, normalised features (SLDD, Q-SENN; glm-saga alone uses it on all features).
GROUP_SELECTION = PathSettings(alpha=0.8, lr=0.1, max_epochs=2000, tol=1e-4, lookbehind=3, group=True)
ELASTIC_NET = PathSettings(alpha=0.99, lr=0.1, max_epochs=2000, tol=1e-4, lookbehind=5, k=100, epsilon=1e-3)


class IndexedBatches:
    """What glm-saga's ``train_saga`` reads: ``(X, y, index)`` batches, reshuffled (seeded) on every pass. The
    package's ``IndexedTensorDataset`` in a ``DataLoader`` gives the same batches but fetches and collates them image by
    image, which costs more than the SAGA step itself on small layers; these are sliced from the tensors at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.y), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.x[index], self.y[index], index


@dataclass
class PathPoint:
    """One point of a path: its penalty, the weights ``(C, F)`` and bias ``(C,)`` fitted there."""
    index: int
    lam: float
    weight: torch.Tensor
    bias: torch.Tensor

    @property
    def nonzeros(self) -> int:
        return int((self.weight != 0).sum())

    @property
    def nonzeros_per_class(self) -> float:
        """Mean number of nonzero weights per class."""
        return self.nonzeros / self.weight.shape[0]

    @property
    def used_features(self) -> torch.Tensor:
        """Features with a nonzero weight for some class."""
        return torch.nonzero((self.weight != 0).any(0)).flatten()


def _safe_group_threshold(weight: torch.Tensor, lam) -> torch.Tensor:
    """glm-saga's ``group_threshold`` (the proximal operator of ``lam * sum of column 2-norms``), with a zero column
    kept at zero instead of 0 / 0 = NaN."""
    norm = weight.norm(p=2, dim=0)
    return (weight - lam * weight / torch.where(norm > 0, norm, torch.ones_like(norm))) * (norm > lam)


@contextmanager
def _patched(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def regularization_path(x: torch.Tensor, y: torch.Tensor, num_classes: int, settings: PathSettings, seed: int = 0,
                        stop: Optional[Callable[[PathPoint], bool]] = None,
                        device: Union[str, torch.device] = 'cpu') -> List[PathPoint]:
    """glm-saga's regularisation path (module docstring) of a multinomial ``Linear(F, num_classes)``, zero-initialised,
    on the (already normalised) features ``x`` (N, F) with labels ``y`` (N,); the batches drawn in a seeded order.
    Returns the points walked, the largest penalty first; with ``stop``, the walk ends after the first point for which
    ``stop(point)`` is true. ``device``: where the layer and the SAGA table live (the batches are moved there).

    Constant features (all values equal: a channel that never fires) are left out of the fit and keep zero weights.
    glm-saga's group threshold divides a column by its norm, so a column that is exactly 0 becomes NaN (0 / 0) and the
    whole path with it; during the walk its ``group_threshold`` is replaced by the same operator with that column left
    at 0 (:func:`_safe_group_threshold`; the authors' copy adds 1e-6 to the norm instead)."""
    saga = import_glm_saga()
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    varying = torch.nonzero((x != x[:1]).any(0)).flatten()
    if varying.numel() == 0:
        raise ValueError('every feature is constant over the training images: the dense model has learned nothing '
                         'to sparsify.')
    full = x.shape[1]
    x = x[:, varying]
    present = torch.bincount(y, minlength=num_classes)
    if (present == 0).any():
        missing = torch.nonzero(present == 0).flatten()[:10].tolist()
        raise ValueError(f'the fitting split has no image of classes {missing}; every class needs training images.')
    linear = nn.Linear(x.shape[1], num_classes, device=device)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    loader = IndexedBatches(x, y, settings.batch_size, seed)
    max_lam = saga.maximum_reg(x, y, group=settings.group) / max(0.001, settings.alpha)
    if not max_lam > 0:
        raise ValueError('the features do not vary with the classes (the largest useful penalty is 0): '
                         'the dense model has learned nothing to sparsify.')
    lams = torch.logspace(math.log10(max_lam), math.log10(settings.epsilon * max_lam), settings.k).tolist()
    points: List[PathPoint] = []
    state = None
    with warnings.catch_warnings(), _patched(saga, 'group_threshold', _safe_group_threshold):
        warnings.filterwarnings('ignore', message='Implicit dimension choice for softmax')
        for i, lam in enumerate(lams):
            state = saga.train_saga(linear, loader, settings.lr, settings.max_epochs, lam, settings.alpha,
                                    group=settings.group, state=state, n_ex=len(y), n_classes=num_classes,
                                    tol=settings.tol, lookbehind=settings.lookbehind, logger=_logger.debug)
            weight = torch.zeros(num_classes, full)
            weight[:, varying] = linear.weight.detach().cpu()
            if not torch.isfinite(weight).all():
                raise ValueError(f'glm-saga\'s path diverged (NaN or inf weights) at point {i} (lambda {lam:.3g}); '
                                 f'lower its learning rate (lr={settings.lr}).')
            point = PathPoint(i, float(lam), weight, linear.bias.detach().cpu().clone())
            points.append(point)
            _logger.debug(f'path point {i}: lambda {lam:.4g}, {point.nonzeros_per_class:.2f} nonzeros per class')
            if stop is not None and stop(point):
                break
    return points

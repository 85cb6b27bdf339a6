""" The QPM stages after dense training, as one library call (docs/METHOD.md, "Pipeline", stages 2-3).

:func:`fit_qpm` takes a dense :class:`~qpm_timm.models.QPMModel` (trained with train.py, or a trained timm
classifier wrapped by :func:`~qpm_timm.models.from_timm_classifier`) and a loader of the *un-augmented*
training images and does statistics -> solve -> QPM head. Fine-tuning (stage 4) is ordinary training of the
returned model; train.py does it with the recipe's optimiser.

Each step is a small function of its own, so a caller can stop, inspect or persist in between:
:func:`~qpm_timm.stats.collect_statistics` -> :func:`problem_from_statistics` -> :func:`~qpm_timm.solver.solve_qpm`
-> :func:`apply_solution`.
"""
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from .baselines import FeatureCollector, PooledFeatures, SparseLayer
from .forward import forward_pass
from .models import QPMModel
from .solver import QPMProblem, QPMSolution, closest_class_pairs, solve_qpm
from .stats import QPMStatistics, collect_statistics

__all__ = ['QPMFit', 'fit_qpm', 'solvable_channels', 'problem_from_statistics', 'apply_solution',
           'collect_fit_inputs', 'apply_sparse_layer', 'head_features', 'NO_REDUNDANCY_TAU']

# The threshold tau that switches Z_R off (docs/METHOD.md, "Baselines: the objective's ablation"): R is divided by its
# largest entry, so no pair reaches 2 and no pair is penalised.
NO_REDUNDANCY_TAU = 2.0

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


@dataclass
class QPMFit:
    """What :func:`fit_qpm` returns: the model with its QPM head, the solution and the statistics it came from."""
    model: QPMModel
    solution: QPMSolution
    statistics: QPMStatistics
    channels: np.ndarray  # backbone channel of every feature of the solved problem (selected: channels[selected])
    solved: bool  # this call solved the problem; False: it read the solution back from solution_path (a rerun)

    @property
    def selected_channels(self) -> np.ndarray:
        """The backbone channels the QPM keeps, in the order of its features ``f0 .. f{n_f*-1}``."""
        return self.channels[self.solution.selected]


def solvable_channels(statistics: QPMStatistics) -> np.ndarray:
    """The channels the problem is solved over, the features of :func:`problem_from_statistics` in order: the
    non-constant ones (a constant feature, std 0, cannot be normalised by the QPM head)."""
    return np.flatnonzero(statistics.std > 0)


def problem_from_statistics(statistics: QPMStatistics, n_features: int, n_per_class: int,
                            locality: bool = True, rho: float = 0.0, pairs: Optional[Sequence] = None,
                            idealize: bool = False, redundancy: bool = True) -> Tuple[QPMProblem, np.ndarray]:
    """The optimisation problem (docs/METHOD.md, "The optimisation problem") over the non-constant features;
    ``locality=False`` drops the locality bias ``B`` from the objective (DINO-QPM's solve), ``redundancy=False`` the
    redundancy term ``Z_R`` (tau above every ``R``: the objective's ablation). CHiQPM (docs/METHOD.md,
    "CHiQPM: forced pairs"): ``rho > 0`` forces the ``int(C * rho)`` closest class pairs by the statistics' ``A``
    over all features (:func:`~qpm_timm.solver.closest_class_pairs`), ``pairs`` forces the given ones, ``idealize``
    adds the idealising step.

    Constant features are left out (:func:`solvable_channels`); returns the problem and the channel of each of its
    features.
    """
    channels = solvable_channels(statistics)
    if rho > 0:
        pairs = closest_class_pairs(statistics.A, rho)
    problem = QPMProblem(statistics.A[channels], B=statistics.B[channels] if locality else None,
                         n_features=n_features, n_per_class=n_per_class, pairs=pairs, idealize=idealize,
                         r_threshold=None if redundancy else NO_REDUNDANCY_TAU)
    return problem, channels


def apply_solution(model: QPMModel, statistics: QPMStatistics, solution: QPMSolution, channels: np.ndarray) -> QPMModel:
    """Set the QPM head (docs/METHOD.md, "Pipeline", stage 4): the selected channels, the binary assignment and
    the dense model's mean/std of those channels."""
    model.set_qpm_head(torch.as_tensor(channels[solution.selected]), torch.as_tensor(solution.assignment),
                       torch.as_tensor(statistics.mean), torch.as_tensor(statistics.std))
    return model


def collect_fit_inputs(model: QPMModel, loader, device: Optional[Union[str, torch.device]] = None, amp: bool = False,
                       progress: bool = False, observers: Sequence[Callable] = ()) -> Tuple[QPMStatistics,
                                                                                           PooledFeatures]:
    """One statistics pass of a dense model over the un-augmented training images giving what every method is
    fitted on: the QPM statistics and the pooled features of the baselines (docs/METHOD.md, "Baselines"). One process
    (the baselines' features are not gathered over torch.distributed ranks)."""
    collector = FeatureCollector()
    device = device or next(model.parameters()).device
    statistics = collect_statistics(model, loader, model.num_classes, device=device, amp=amp, progress=progress,
                                    observers=[collector, *observers])
    return statistics, collector.result()


def head_features(model: QPMModel, loader, device: Optional[Union[str, torch.device]] = None,
                  amp: bool = False) -> PooledFeatures:
    """The raw pooled features of the channels a compact head reads (all channels for a dense head), with the
    labels: a Q-SENN round's features of the current model (docs/METHOD.md, "Baselines: Q-SENN")."""
    collector = FeatureCollector()
    forward_pass(model, loader, [collector], device or next(model.parameters()).device, amp, desc='head features')
    return collector.result()


def apply_sparse_layer(model: QPMModel, layer: SparseLayer) -> QPMModel:
    """Set a baseline's sparse head (:meth:`QPMModel.set_sparse_head`) from its fitted :class:`SparseLayer`."""
    model.set_sparse_head(layer.kind, torch.as_tensor(layer.channels), torch.as_tensor(layer.weight),
                          torch.as_tensor(layer.bias), torch.as_tensor(layer.mean).float(),
                          torch.as_tensor(layer.std).float())
    return model


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _broadcast(obj: Any) -> Any:
    """``obj`` of rank 0 on every rank (identity without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _solve(statistics: QPMStatistics, n_features: int, n_per_class: int, path: Optional[Path], locality: bool,
           chiqpm: dict, **solver_kwargs) -> Tuple[QPMSolution, np.ndarray, bool]:
    """The solution, the channel of every feature of the problem, and whether it was solved (else read back)."""
    problem, channels = problem_from_statistics(statistics, n_features, n_per_class, locality, **chiqpm)
    if path is not None and path.is_file():  # a finished solve of these statistics (checked by its input hash)
        return QPMSolution.load(path, problem), channels, False
    solution = solve_qpm(problem, **solver_kwargs)
    if path is not None:
        solution.save(path)
    (_logger.warning if solution.cut_by_wall_clock else _logger.info)('solved: ' + solution.summary())
    return solution, channels, True


def fit_qpm(
        model: QPMModel,
        loader,
        statistics: Optional[QPMStatistics] = None,
        statistics_path: Optional[PathLike] = None,
        solution_path: Optional[PathLike] = None,
        device: Optional[Union[str, torch.device]] = None,
        amp: bool = False,
        progress: bool = False,
        observers: Sequence[Callable] = (),
        locality: bool = True,
        rho: float = 0.0,
        pairs: Optional[Sequence] = None,
        idealize: bool = False,
        **solver_kwargs,
) -> QPMFit:
    """Statistics -> solve -> QPM head for a dense ``model`` (module docstring); returns a :class:`QPMFit`.

    Args:
        model: a dense QPMModel (``head='dense'``); its ``n_features`` / ``n_per_class`` are ``n_f*`` / ``n_wc``.
        loader: the training images with eval transforms (no augmentation), yielding ``(images, targets)``;
            under torch.distributed each rank reads a disjoint shard (``create_qpm_loader(..., shard=True)``).
        statistics: statistics already collected for this model (then ``loader`` is not read).
        statistics_path, solution_path: files that persist the two results (``statistics.npz``,
            ``solution.json``): read when present, written (rank 0) when computed, so a rerun resumes (the
            result's ``solved`` says whether the solution was computed or read back).
        device, amp, progress: of the statistics pass (device default: the model's).
        observers: callables that ride along the statistics pass (:func:`~qpm_timm.stats.collect_statistics`),
            e.g. the explanations' :class:`~qpm_timm.explain.GalleryCollector`; not called when the statistics
            are read from ``statistics`` / ``statistics_path``.
        locality: keep the locality bias ``B`` in the objective (False: DINO-QPM's solve).
        rho, pairs, idealize: CHiQPM's forced class pairs (:func:`problem_from_statistics`); the solution's
            ``settings["pairs"]`` lists them.
        **solver_kwargs: passed to :func:`~qpm_timm.solver.solve_qpm` (``effort``, ``time_limit``, ``seed``, ...).
    """
    if not isinstance(model, QPMModel) or model.is_qpm:
        kind = 'a QPM already' if isinstance(model, QPMModel) else type(model).__name__
        raise ValueError(f'fit_qpm needs a dense QPMModel (head="dense"), got {kind}; wrap a trained timm '
                         f'classifier with qpm_timm.from_timm_classifier or train one with train.py.')
    stats_file = Path(statistics_path) if statistics_path else None
    if statistics is None and stats_file is not None and stats_file.is_file():
        statistics = QPMStatistics.load(stats_file)
    if statistics is None:
        device = device or next(model.parameters()).device
        statistics = collect_statistics(model, loader, model.num_classes, device=device, amp=amp, progress=progress,
                                        observers=observers)
        if stats_file is not None and _rank() == 0:
            statistics.save(stats_file)
    if statistics.num_classes != model.num_classes:
        raise ValueError(f'the statistics have {statistics.num_classes} classes, the model {model.num_classes}.')
    found = _solve(statistics, model.n_features, model.n_per_class, Path(solution_path) if solution_path else None,
                   locality, dict(rho=rho, pairs=pairs, idealize=idealize), **solver_kwargs) if _rank() == 0 else None
    solution, channels, solved = _broadcast(found)
    apply_solution(model, statistics, solution, channels)
    return QPMFit(model, solution, statistics, channels, solved)

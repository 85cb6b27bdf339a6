"""``train.py --method``: which compact head a run makes from its dense model (docs/METHOD.md, "Baselines").

``qpm`` and ``chiqpm`` solve the QPM problem (:func:`qpm_timm.fit.fit_qpm`); ``sldd``, ``qsenn`` and ``glm`` fit a
baseline's sparse layer with glm-saga (:mod:`qpm_timm.baselines`) on the pooled features of the same statistics pass.
Every stage leaves its result in the experiment folder, so ``--resume`` continues a baseline as it does a QPM:

    features.npz              the dense model's pooled training features (the baselines' input)
    sparse_sldd.npz           SLDD-Model's layer (before its fine-tune)
    sparse_glm.npz            glm-saga's layer (no fine-tune)
    sparse_qsenn_round<r>.npz Q-SENN's layer of round r (1-4), each followed by that round's fine-tune
"""
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import yaml

from ..baselines import (
    ELASTIC_NET,
    GROUP_SELECTION,
    QSENN_ROUND_LR_DECAY,
    PathSettings,
    PooledFeatures,
    SparseLayer,
    check_selection_size,
    fit_glm,
    fit_qsenn_round,
    fit_sldd,
    select_from_features,
)
from ..fit import apply_sparse_layer, collect_fit_inputs, head_features
from ..stats import QPMStatistics
from .cli import UsageError

__all__ = ['METHODS', 'BASELINES', 'FEATURES', 'BaselineFit', 'check_method_args', 'check_method_model',
           'resolve_method',
           'method_rounds', 'round_lr_decay', 'path_settings', 'fit_baseline', 'qsenn_round_layer', 'layer_file']

METHODS = ('qpm', 'chiqpm', 'sldd', 'qsenn', 'glm')
BASELINES = ('sldd', 'qsenn', 'glm')
FEATURES = 'features.npz'
CHIQPM_DEFAULTS = dict(rho=0.5, relu_head=True, fgl_weight=3.0)  # docs/METHOD.md, "CHiQPM"


@dataclass
class BaselineFit:
    """What a baseline's stages 2-3 give: the model with its sparse head, the layer, and its inputs."""
    model: object
    layer: SparseLayer
    statistics: QPMStatistics
    features: PooledFeatures
    fitted: bool  # this call fitted the layer; False: read back from the experiment folder
    layers: List[SparseLayer] = field(default_factory=list)  # Q-SENN: the layer of every round so far

    @property
    def seconds(self) -> float:
        """Seconds of sparsification over every round (glm-saga's paths, the selection, quantisation)."""
        return float(sum(layer.info.get('seconds', 0.0) for layer in (self.layers or [self.layer])))


def check_method_args(args) -> None:
    """``--method`` and the baselines' flags, refused before anything is built."""
    method = getattr(args, 'method', 'qpm')
    if method not in METHODS:
        raise UsageError(f'--method must be one of {METHODS}, got {method!r}.')
    if method in BASELINES:
        if args.rho > 0 or args.pairs or args.idealize or args.relu_head or args.fgl_weight > 0:
            raise UsageError(f'--method {method} fits a sparse layer, not a QPM: drop CHiQPM\'s --rho/--pairs/'
                             f'--idealize/--relu-head/--fgl-weight (or use --method chiqpm).')
        if getattr(args, 'distributed', False) or getattr(args, 'world_size', 1) > 1:
            raise UsageError(f'--method {method} fits its layer on one process; run it without torchrun.')
    for flag in ('path_points', 'path_max_epochs'):
        if getattr(args, flag) < 1:
            raise UsageError(f'--{flag.replace("_", "-")} must be >= 1, got {getattr(args, flag)}.')
    if not (math.isfinite(args.path_epsilon) and 0 < args.path_epsilon < 1):
        raise UsageError(f'--path-epsilon must lie in (0, 1), got {args.path_epsilon}.')


def resolve_method(args, args_text: Optional[str]) -> Optional[str]:
    """``--method chiqpm`` sets CHiQPM's solve, head and loss where the flags are at their plain-QPM values
    (``--rho 0.5 --relu-head --fgl-weight 3``); returns ``args_text`` (args.yaml) recording what the run uses."""
    if getattr(args, 'method', 'qpm') != 'chiqpm':
        return args_text
    if not (args.rho > 0 or args.pairs):
        args.rho = CHIQPM_DEFAULTS['rho']
    args.relu_head = True
    if args.fgl_weight == 0:
        args.fgl_weight = CHIQPM_DEFAULTS['fgl_weight']
    if args_text is None:
        return None
    saved = yaml.safe_load(args_text)
    saved.update(rho=args.rho, relu_head=args.relu_head, fgl_weight=args.fgl_weight)
    return yaml.safe_dump(saved, default_flow_style=False)


def method_rounds(args) -> List[int]:
    """Fine-tune epochs of every round: ``--finetune-rounds`` (or one round of ``--finetune-epochs``); glm-saga has
    none; Q-SENN without ``--finetune-rounds`` the authors' 10/10/10/40 as a share of ``--finetune-epochs`` (e/4
    three times, then e)."""
    method = getattr(args, 'method', 'qpm')
    if method == 'glm':
        return []
    if args.finetune_rounds:
        return list(args.finetune_rounds)
    if method == 'qsenn':
        e = args.finetune_epochs
        return [max(1, round(e / 4))] * 3 + [e] if e > 0 else [0] * 4
    return [args.finetune_epochs]


def round_lr_decay(args) -> float:
    """``--finetune-round-lr-decay``; unset: 0.9 for Q-SENN (the authors'), 1 otherwise."""
    value = getattr(args, 'finetune_round_lr_decay', None)
    if value is not None:
        return value
    return QSENN_ROUND_LR_DECAY if getattr(args, 'method', 'qpm') == 'qsenn' else 1.0


def path_settings(args, settings: PathSettings = ELASTIC_NET) -> PathSettings:
    """The authors' path settings with ``--path-points`` (k), ``--path-max-epochs`` and ``--path-epsilon``."""
    return settings.replace(k=args.path_points, max_epochs=args.path_max_epochs,
                            epsilon=args.path_epsilon if settings.group is False else settings.epsilon)


def layer_file(exp: Path, method: str, round_index: int = 0) -> Path:
    return exp / (f'sparse_qsenn_round{round_index + 1}.npz' if method == 'qsenn' else f'sparse_{method}.npz')


def _inputs(model, loader, exp: Path, statistics_file: Path, device, amp: bool, progress: bool,
            observers: Sequence[Callable]):
    """The statistics and the pooled features of one pass, read back when both are in the folder."""
    features_file = exp / FEATURES
    if statistics_file.is_file() and features_file.is_file():
        return QPMStatistics.load(statistics_file), PooledFeatures.load(features_file), False
    statistics, features = collect_fit_inputs(model, loader, device=device, amp=amp, progress=progress,
                                              observers=observers)
    statistics.save(statistics_file)
    features.save(features_file)
    return statistics, features, True


def check_method_model(args, model) -> None:
    """The sizes a baseline needs from the model (``n_f*`` channels to select), refused before anything is written."""
    if getattr(args, 'method', 'qpm') in ('sldd', 'qsenn'):
        try:
            check_selection_size(args.n_features, model.num_features, f'--method {args.method}')
        except ValueError as e:
            raise UsageError(str(e)) from e


def fit_baseline(args, model, loader, exp: Path, statistics_file: Path, device, observers: Sequence[Callable] = ()
                 ) -> BaselineFit:
    """Stages 2-3 of a baseline (docs/METHOD.md, "Baselines"): the statistics pass with the pooled features, then
    SLDD's or glm-saga's layer, or Q-SENN's feature selection and first round's layer; the head set on ``model``."""
    check_method_model(args, model)
    statistics, features, _ = _inputs(model, loader, exp, statistics_file, device, args.amp,
                                      not args.no_progress, observers)
    if features.num_features != model.num_features:
        raise UsageError(f'{exp / FEATURES} holds {features.num_features} features, the model has '
                         f'{model.num_features}: it is of another model; delete it and {statistics_file.name} to '
                         f'rerun the statistics stage.')
    file = layer_file(exp, args.method)
    fitted = not file.is_file()
    if not fitted:
        layer = SparseLayer.load(file)
    elif args.method == 'qsenn':
        layer = qsenn_round_layer(args, model, loader, exp, features, None, 0, device)
    else:
        path = path_settings(args)
        selection = path_settings(args, GROUP_SELECTION)
        layer = fit_sldd(features, model.num_classes, args.n_features, args.n_per_class, args.seed, selection,
                         path) if args.method == 'sldd' else \
            fit_glm(features, model.num_classes, args.n_per_class, args.seed, path)
    if fitted and args.method != 'qsenn':
        layer.save(file)
    apply_sparse_layer(model, layer)
    return BaselineFit(model, layer, statistics, features, fitted, [layer])


def qsenn_round_layer(args, model, loader, exp: Path, features: Optional[PooledFeatures],
                      channels, round_index: int, device) -> SparseLayer:
    """Q-SENN's layer of round ``round_index`` (docs/METHOD.md, "Baselines: Q-SENN"), saved, or read back: round 0
    selects ``n_f*`` channels as SLDD does and fits on the dense model's ``features`` of them; a later round fits on
    the current model's raw pooled features of the same channels (one more pass over ``loader``)."""
    file = layer_file(exp, 'qsenn', round_index)
    if file.is_file():
        return SparseLayer.load(file)
    extra = {}
    if round_index == 0:
        start = time.perf_counter()
        channels, extra['selection'] = select_from_features(features, model.num_classes, args.n_features, args.seed,
                                                            path_settings(args, GROUP_SELECTION))
        extra['selection_seconds'] = time.perf_counter() - start
        round_features = features.restricted(channels)
    else:  # the pass over the images is not sparsification: it is left out of the layer's seconds
        round_features = head_features(model, loader, device, args.amp)
    layer = fit_qsenn_round(round_features, channels, model.num_classes, args.n_per_class, args.seed,
                            path_settings(args), round_index)
    layer.info.update(extra)
    layer.info['seconds'] += extra.get('selection_seconds', 0.0)
    layer.save(file)
    return layer

"""The training pipeline of ``train.py`` (docs/METHOD.md, "Pipeline"): dense training -> statistics -> solve ->
fine-tune -> export and report, each stage leaving its result in the experiment folder (:mod:`.experiment`)."""
import csv
import json
import logging
import math
import os
import time
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    AverageMeter,
    CheckpointSaver,
    dispatch_clip_grad,
    init_distributed_device,
    random_seed,
    update_summary,
)
from torch import nn
from tqdm import tqdm

from .. import hub
from ..atomic import atomic_write
from ..data.feature_cache import ensure_feature_cache
from ..data.loader import create_qpm_loader
from ..explain import FeatureGallery, GalleryCollector, model_feature_table, write_report
from ..fit import QPMFit, apply_sparse_layer, fit_qpm
from ..losses import ActivationL1, FeatureDiversityLoss, FeatureGroundingLoss
from ..models.head import check_qpm_sizes
from ..precision import Precision, autocast, to_device
from ..solver import pair_shares, sharing_pairs
from .args import resolve_args_precision
from .cli import UsageError
from .data import build_train_data, eval_data_config, resolve_dataset
from .evaluate import Evaluation, evaluate, recovery_of
from .experiment import (
    DENSE,
    EXPORT,
    FEATURE_CACHE,
    FINETUNE,
    GALLERY,
    REPORT,
    RESULTS,
    SOLUTION,
    STATISTICS,
    experiment_folder,
    restore_args,
    resume_epoch,
    start_experiment,
)
from .methods import (
    BASELINES,
    BaselineFit,
    check_method_args,
    check_method_model,
    fit_baseline,
    method_rounds,
    qsenn_round_layer,
    resolve_method,
    round_lr_decay,
)
from .model import check_input_size, create_train_model
from .sets import check_set_args, run_sets
from .timing import TimedLoader, add_seconds, reset_timings, stage_seconds, timed

__all__ = ['check_train_args', 'finetune', 'train']

_logger = logging.getLogger('train')


def check_train_args(args) -> None:
    """Flags that are wrong whatever the data: refused before anything is built."""
    try:
        check_qpm_sizes(0, args.n_features, args.n_per_class)
    except ValueError as e:
        raise UsageError(f'--n-features/--n-per-class: {e}') from e
    for flag in ('l1_maps', 'l1_pooled', 'finetune_l1_maps', 'finetune_l1_pooled', 'cache_views'):
        if not getattr(args, flag) >= 0:
            raise UsageError(f'--{flag.replace("_", "-")} must be >= 0, got {getattr(args, flag)}.')
    if not (math.isfinite(args.solver_effort) and args.solver_effort > 0):
        raise UsageError(f'--solver-effort must be a positive finite number, got {args.solver_effort}.')
    if args.batch_size < 1:
        raise UsageError(f'-b/--batch-size must be >= 1, got {args.batch_size}.')
    if args.val_interval < 1 or (args.val_interval > 1 and args.sched == 'plateau'):
        raise UsageError(f'--val-interval must be >= 1 (1 with --sched plateau, which steps on every validation), '
                         f'got {args.val_interval}.')
    check_chiqpm_args(args)
    check_method_args(args)
    for flag, path in (('--initial-checkpoint', args.initial_checkpoint), ('--pretrained-path', args.pretrained_path)):
        if path and not os.path.isfile(path):
            raise UsageError(f'{flag} {path} does not exist.')


def check_chiqpm_args(args) -> None:
    """CHiQPM's flags (docs/METHOD.md, "CHiQPM"): pairs from --rho or --pairs (not both), --idealize needs pairs,
    a non-negative FGL weight, fine-tune rounds of at least one epoch."""
    if not (math.isfinite(args.rho) and args.rho >= 0):
        raise UsageError(f'--rho must be a finite number >= 0, got {args.rho}.')
    if args.rho > 0 and args.pairs:
        raise UsageError('--rho and --pairs both choose the forced pairs; give one of them.')
    if args.idealize and not (args.rho > 0 or args.pairs):
        raise UsageError('--idealize relaxes forced pairs: give --rho (e.g. 0.5) or --pairs too.')
    if not args.fgl_weight >= 0:
        raise UsageError(f'--fgl-weight must be >= 0, got {args.fgl_weight}.')
    if args.fgl_weight > 0 and not args.relu_head:
        _logger.warning('--fgl-weight without --relu-head: CHiQPM grounds the ReLU\'d normalised features.')
    if args.finetune_rounds is not None and (not args.finetune_rounds or min(args.finetune_rounds) < 1):
        raise UsageError(f'--finetune-rounds needs one or more epoch counts >= 1, got {args.finetune_rounds}.')


# --- one stage of training -------------------------------------------------------------------------------------
class WithFeatures(nn.Module):
    """``forward`` = ``forward_with_features`` so that DDP sees the pass that computes the loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_with_features(x)


def stage_losses(name: str, args) -> tuple:
    """The stage's terms beside cross-entropy: the FDL (docs/METHOD.md, "Feature Diversity Loss"), DINO-QPM's L1
    activation terms (docs/METHOD.md, "ViT backbones and the adapter") and, in the fine-tune, CHiQPM's FGL
    (docs/METHOD.md, "CHiQPM: Feature Grounding Loss"; None when its weight is 0)."""
    if name == FINETUNE:
        beta = args.fdl_beta if args.finetune_fdl_beta is None else args.finetune_fdl_beta
        weight = getattr(args, 'fgl_weight', 0.0)  # args.yaml of a run made before the flag (editing) lacks it
        fgl = FeatureGroundingLoss(weight) if weight > 0 else None
        return FeatureDiversityLoss(beta=beta), ActivationL1(args.finetune_l1_maps, args.finetune_l1_pooled), fgl
    return FeatureDiversityLoss(beta=args.fdl_beta), ActivationL1(args.l1_maps, args.l1_pooled), None


def fgl_active(args, epoch: int) -> bool:
    """The FGL counts in epoch ``epoch`` of a fine-tune round unless ``--fgl-epochs`` ends it earlier (CHiQPM:
    off from epoch 30 of each round)."""
    return getattr(args, 'fgl_epochs', None) is None or epoch < args.fgl_epochs


def train_one_epoch(epoch: int, model, step_model, loader, optimizer, scheduler, losses_fn, args, device):
    model.train()
    fdl, l1, fgl = losses_fn
    fgl = fgl if fgl is not None and fgl_active(args, epoch) else None
    losses = AverageMeter()
    num_updates = epoch * len(loader)
    bar = tqdm(loader, desc=f'epoch {epoch}', disable=args.no_progress or args.rank != 0, leave=False)
    for x, y in bar:
        x, y = to_device(x, device, args.channels_last), y.to(device)
        with autocast(device, args.amp):
            out = step_model(x)
            loss = (F.cross_entropy(out.logits, y) + fdl(out.feature_maps, out.logits, model.class_weights)
                    + l1(out.feature_maps, out.pooled))
            if fgl is not None:
                loss = loss + fgl(model.head.normalize(out.pooled), y, model.class_weights)
        optimizer.zero_grad()
        loss.backward()
        if args.clip_grad:
            dispatch_clip_grad(model.parameters(), args.clip_grad, mode=args.clip_mode)
        optimizer.step()
        losses.update(loss.item(), x.shape[0])
        num_updates += 1
        if scheduler is not None:  # a no-op unless the schedule steps per update (--sched-on-updates)
            scheduler.step_update(num_updates=num_updates, metric=losses.avg)
        bar.set_postfix(loss=f'{losses.avg:.3f}')
    return dict(loss=losses.avg)


def _validate(model, loader, device, args) -> Evaluation:
    return evaluate(model, loader, device, args.amp, args.channels_last)


NOT_VALIDATED = OrderedDict(loss='', top1='', top5='')  # summary.csv's eval columns of an epoch --val-interval skips


def run_stage(name: str, model, loaders, args, device, epochs: int, optimizer, scheduler, folder: Path,
              start_epoch: int) -> Dict[str, float]:
    """Train ``epochs`` epochs, checkpointing every one (``last.pth.tar``) with timm's CheckpointSaver; returns the
    last validation metrics."""
    train_loader, val_loader = loaders
    step_model = WithFeatures(model)
    if args.distributed:
        step_model = nn.parallel.DistributedDataParallel(step_model)
    losses_fn = stage_losses(name, args)
    if args.rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    saver = CheckpointSaver(model, optimizer, args=args, checkpoint_dir=str(folder), recovery_dir=str(folder),
                            max_history=1) if args.rank == 0 else None
    metrics = {}
    if scheduler is not None and start_epoch > 0:
        scheduler.step(start_epoch)
    for epoch in range(start_epoch, epochs):
        random_seed(args.seed + 1000 * (name == FINETUNE) + epoch, args.rank)  # same batches after a resume
        if hasattr(train_loader.sampler, 'set_epoch'):
            train_loader.sampler.set_epoch(epoch)
        if hasattr(train_loader.dataset, 'set_epoch'):  # a feature cache with augmented views
            train_loader.dataset.set_epoch(epoch)
        train_metrics = train_one_epoch(epoch, model, step_model, train_loader, optimizer, scheduler, losses_fn, args,
                                        device)
        validated = (epoch + 1) % args.val_interval == 0 or epoch == epochs - 1
        metrics = _validate(model, val_loader, device, args).metrics() if validated else NOT_VALIDATED
        top1 = metrics['top1'] if validated else None
        if scheduler is not None:
            scheduler.step(epoch + 1, top1)
        if saver is not None:
            update_summary(epoch, train_metrics, metrics, str(folder / 'summary.csv'),
                           lr=optimizer.param_groups[0]['lr'], write_header=epoch == 0)
            saver.save_checkpoint(epoch, metric=top1)
        _logger.info(f'{name} epoch {epoch}: train loss {train_metrics["loss"]:.4f}, '
                     + (f'val top1 {top1:.2f}' if validated else 'not validated (--val-interval)'))
    return metrics


def finetune(model, loaders, args, device, folder: Path, epochs: Optional[int] = None,
             lr: Optional[float] = None) -> Dict[str, float]:
    """Stage 4 (one round of it): fine-tune ``epochs`` (default ``args.finetune_epochs``) epochs at ``lr`` (default
    ``args.finetune_lr``) with the binary head frozen (only trainable parameters), the recipe's optimiser and step
    schedule, resuming after the last epoch checkpointed in ``folder``."""
    epochs = args.finetune_epochs if epochs is None else epochs
    decay = args.weight_decay if args.finetune_weight_decay is None else args.finetune_weight_decay
    optimizer = create_optimizer_v2([p for p in model.parameters() if p.requires_grad], opt=args.finetune_opt,
                                    lr=args.finetune_lr if lr is None else lr, momentum=args.finetune_momentum,
                                    weight_decay=decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched='step', num_epochs=epochs,
                                       decay_epochs=args.finetune_decay_epochs, decay_rate=args.decay_rate)
    start = resume_epoch(model, optimizer, folder)
    with timed(FINETUNE):
        return run_stage(FINETUNE, model, loaders, args, device, epochs, optimizer, scheduler, folder, start)


# --- stages 1-4 ------------------------------------------------------------------------------------------------
def feature_caches(args, model, train_set, train_eval_set, val_set, folder: Path, device) -> tuple:
    """``--feature-cache``: the frozen backbone's maps of the training views, of the un-augmented training images (the
    statistics) and of the validation images, each built once in ``<experiment>/feature_cache/`` (rebuilt when the
    backbone, the transform or the data change)."""
    build = dict(seed=args.seed, dtype=args.cache_dtype, batch_size=args.validation_batch_size or args.batch_size,
                 num_workers=args.workers, device=device, amp=args.amp, progress=not args.no_progress)
    stats = ensure_feature_cache(model, train_eval_set, folder / 'train_eval', **build)
    train = stats if args.cache_views == 0 else ensure_feature_cache(
        model, train_set, folder / f'train_views{args.cache_views}', views=args.cache_views, **build)
    return train, stats, ensure_feature_cache(model, val_set, folder / 'val', **build)


def train_and_fit(args, model, loaders, stats_data, exp: Path, device, image_size) -> Tuple[QPMFit, Dict[str, float]]:
    """Stages 1-4 on images or, inside ``model.reading_backbone_maps()``, on the feature cache: dense training,
    statistics (the feature gallery rides along), solve, QPM head, fine-tune; returns the
    :class:`~qpm_timm.fit.QPMFit` and the last validation metrics."""
    # stage 1: dense training
    if not args.skip_dense and args.epochs > 0:
        trainable = [[p for p in m.parameters() if p.requires_grad] for m in (model.backbone, model.adapter)]
        groups = [{'params': params} for params in trainable if params] + [
            {'params': list(model.head.parameters()), 'lr': args.lr * args.head_lr_scale}]
        optimizer = create_optimizer_v2(groups, **optimizer_kwargs(cfg=args))
        scheduler, _ = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=len(loaders[0]))
        start = resume_epoch(model, optimizer, exp / DENSE)
        with timed(DENSE):
            run_stage(DENSE, model, loaders, args, device, args.epochs, optimizer, scheduler, exp / DENSE, start)

    # stages 2-3: statistics of the dense model on the un-augmented training set (the explanations' feature
    # gallery rides along), solve (rank 0) or a baseline's sparse layer, the compact head
    collector = GalleryCollector(image_size=image_size if model.input_is_backbone_maps else None)
    stats_loader = create_qpm_loader(stats_data, args.validation_batch_size or args.batch_size,
                                     num_workers=args.workers, shard=True, loader_class=TimedLoader)
    observers = [collector] if args.report else ()
    with timed('statistics_and_solve'):
        if args.method in BASELINES:
            fit = fit_baseline(args, model, stats_loader, exp, exp / STATISTICS, device, observers)
        else:
            fit = fit_qpm(model, stats_loader, statistics_path=exp / STATISTICS, solution_path=exp / SOLUTION,
                          device=device, amp=args.amp, progress=not args.no_progress and args.rank == 0,
                          observers=observers, effort=args.solver_effort, time_limit=args.solver_time_limit,
                          seed=args.seed, log=args.solver_log, locality=args.locality, rho=args.rho,
                          pairs=args.pairs, idealize=args.idealize)
    if isinstance(fit, BaselineFit):
        if fit.fitted:
            add_seconds('solve', fit.layer.info.get('seconds', 0.0))
    elif fit.solved:  # else a resumed run read the solution back
        add_seconds('solve', fit.solution.wall_time)
    if collector.seen:  # the pass ran in this process (not read back after a resume)
        gallery = collector.gather(all_ranks=True)
        if args.rank == 0:
            gallery.save(exp / GALLERY)

    # stage 4: fine-tune with the compact head's layer frozen, in one or more rounds (CHiQPM: 10/10/10/40 epochs, each
    # a fresh optimiser and step schedule, lr x 0.9 per round; docs/METHOD.md, "CHiQPM: Feature Grounding Loss"; Q-SENN:
    # a new layer before every round, docs/METHOD.md, "Baselines: Q-SENN")
    metrics = {}
    for r, epochs in enumerate(method_rounds(args)):
        if args.method == 'qsenn' and r > 0:
            layer = qsenn_round_layer(args, model, stats_loader, exp, None, fit.layer.channels, r, device)
            apply_sparse_layer(model, layer)
            fit.layer = layer
            fit.layers.append(layer)
        if epochs > 0:
            metrics = finetune(model, loaders, args, device, exp / (FINETUNE if r == 0 else f'{FINETUNE}_round{r + 1}'),
                               epochs, args.finetune_lr * round_lr_decay(args) ** r)
    if not metrics:
        metrics = _validate(model, loaders[1], device, args).metrics()
    return fit, metrics


# --- stage 5 ---------------------------------------------------------------------------------------------------
def dense_accuracy(folder: Path) -> Dict[str, float]:
    """The dense model's own validation, read from its stage's ``summary.csv`` (so a resumed run reports it too):
    top-1/top-5 of its last epoch and its best top-1 with that epoch; {} without a dense stage (--skip-dense)."""
    rows: Dict[int, Dict[str, str]] = {}
    if (folder / 'summary.csv').is_file():
        with open(folder / 'summary.csv', newline='') as f:
            for row in csv.DictReader(f):
                rows[int(row['epoch'])] = row  # an epoch rerun after a kill replaces its first row
    rows = {epoch: row for epoch, row in rows.items() if row['eval_top1']}  # epochs skipped by --val-interval
    if not rows:
        return {}
    last = rows[max(rows)]
    best = max(rows.values(), key=lambda row: float(row['eval_top1']))  # the first of equal epochs
    return dict(dense_top1=float(last['eval_top1']), dense_top5=float(last['eval_top5']),
                dense_best_top1=float(best['eval_top1']), dense_best_epoch=int(best['epoch']))


def accuracy_line(results: Dict[str, Any]) -> str:
    """The final summary's accuracy: the QPM's validation top-1 next to the dense model's it came from."""
    line = f'validation top-1 {results["top1"]:.2f} %'
    if 'dense_top1' in results:
        line += (f' (dense model before the QPM: {results["dense_top1"]:.2f} % at its last epoch, best '
                 f'{results["dense_best_top1"]:.2f} % at epoch {results["dense_best_epoch"]})')
    return line


def chiqpm_settings(args, solution) -> Dict[str, Any]:
    """CHiQPM's settings of the run and what its solution achieved (results.json and config.json's ``training``);
    {} for a plain QPM. docs/METHOD.md, "CHiQPM"."""
    if not (args.rho > 0 or args.pairs or args.relu_head or args.fgl_weight > 0):
        return {}
    pairs = solution.settings.get('pairs') or []
    shared = solution.settings['n_per_class'] - 1
    return dict(rho=args.rho, forced_pairs=pairs, idealize=args.idealize, relu_head=args.relu_head,
                fgl_weight=args.fgl_weight, fgl_epochs=args.fgl_epochs, finetune_rounds=method_rounds(args),
                finetune_round_lr_decay=round_lr_decay(args),
                forced_pairs_sharing=int((pair_shares(solution.assignment, pairs) == shared).sum()) if pairs else 0,
                class_pairs_sharing=len(sharing_pairs(solution.assignment, shared)))


def sparsification_summary(fit: BaselineFit) -> Dict[str, Any]:
    """A baseline's layer as measured (results.json and config.json's ``training``): features used, nonzero weights
    per class, the distinct weight values of Q-SENN, the path point of every round and the seconds it all took."""
    layer = fit.layer
    info = dict(kind=layer.kind, features_used=layer.features_used, nonzeros=layer.nonzeros,
                nonzeros_per_class=layer.nonzeros_per_class, seconds=fit.seconds,
                rounds=[{k: v for k, v in lay.info.items() if k != 'selection'} for lay in fit.layers])
    if 'selection' in (fit.layers[0].info if fit.layers else {}):
        info['selection'] = fit.layers[0].info['selection']
    return info


def export_and_report(args, model, fit: QPMFit, metrics, exp: Path, data, data_config, device,
                      precision: Precision) -> Dict[str, Any]:
    """Rank 0: the prediction sets and concept recovery (one pass over the validation images), the explanation
    report, the export (with the sets' calibration) and the results; returns the results."""
    train_eval_set, val_set, class_names = data
    baseline = isinstance(fit, BaselineFit)
    solution = None if baseline else fit.solution
    vb = args.validation_batch_size or args.batch_size
    dense = dense_accuracy(exp / DENSE)
    results = dict(top1=metrics['top1'], top5=metrics['top5'], **dense, method=args.method)
    if baseline:
        results['sparsification'] = sparsification_summary(fit)
    else:
        results.update(objective=solution.objective, solver_status=solution.status, solver_bound=solution.bound,
                       solver_gap=solution.gap, solver_effort=solution.effort, solver_effort_used=solution.effort_used,
                       solver_cut_by_wall_clock=solution.cut_by_wall_clock)
    with timed('prediction_sets'):
        loader = create_qpm_loader(val_set, vb, num_workers=args.workers, loader_class=TimedLoader)
        evaluation = evaluate(model, loader, device, args.amp, args.channels_last, keep_features=True)
        if baseline:  # CHiQPM's sets are branches of a binary assignment's feature tree
            calibration, set_table = None, 'prediction sets: not calibrated (they need a binary QPM assignment)'
        else:
            try:
                calibration, set_results, set_table = run_sets(model, evaluation, val_set, args)
                results.update(set_results)
            except ValueError as e:  # a validation split too small to split, or without some class: no sets
                calibration, set_table = None, f'prediction sets: not calibrated ({e})'
    recovery = recovery_of(model, evaluation, val_set)  # None for a dataset without planted concepts
    if recovery is not None:
        results['concept_recovery'] = recovery.score
    report = None
    if args.report:
        with timed(REPORT):
            report = write_report(model.eval(), exp / REPORT,
                                  FeatureGallery.load(exp / GALLERY) if (exp / GALLERY).is_file() else None,
                                  train_eval_set, val_set, class_names, device=device, amp=args.amp, batch_size=vb,
                                  num_workers=args.workers, progress=not args.no_progress, dense_accuracy=dense,
                                  calibration=calibration)
    names = report.names.labels if report else None
    chiqpm = {} if baseline else chiqpm_settings(args, solution)
    if chiqpm:
        results['chiqpm'] = chiqpm
    results['precision'] = precision.as_dict()
    training = dict(precision=precision.as_dict(), method=args.method, **(dict(chiqpm=chiqpm) if chiqpm else {}))
    if baseline:
        training['sparsification'] = results['sparsification']
    card = {k: v for k, v in results.items() if isinstance(v, float) and not isinstance(v, bool)}
    with timed(EXPORT):
        hub.save_pretrained(model.eval(), exp / EXPORT, label_names=class_names, data_config=data_config,
                            feature_names=names, report_dir=report.folder if report else None,
                            calibration_json=calibration.to_json() if calibration else None,
                            results=[hub.RunResults('train.py', card, dataset=args.dataset, split=args.val_split)],
                            training=training)
    print(model_feature_table(model, class_names, max_rows=50, names=names))
    if recovery is not None:
        print(recovery.format(getattr(val_set, 'concept_names', None)))
    if baseline:
        info = results['sparsification']
        print(f'{args.method}: {info["features_used"]} features used, {info["nonzeros_per_class"]:.2f} nonzero weights '
              f'per class (measured), sparsification {info["seconds"]:.1f} s')
    else:
        if solution.cut_by_wall_clock:
            print(f'WARNING: the solve was cut by --solver-time-limit {args.solver_time_limit} s before its effort '
                  f'was spent; the assignment may depend on machine load (raise the limit or lower --solver-effort).')
        print(f'solver: {solution.summary()}')
    if report:
        print(f'explanation report: open {report.index} in a browser')
    print(set_table)
    return results


def train(args, args_text: str) -> Dict[str, Any]:
    """The whole run of ``train.py`` on parsed arguments (``args_text``: their YAML, kept as ``args.yaml``)."""
    started = time.time()
    reset_timings()
    args_text = resolve_method(args, args_text)  # --method chiqpm: CHiQPM's settings, recorded in args.yaml
    check_train_args(args)
    check_set_args(args)
    device = init_distributed_device(args)
    resolve_dataset(args)
    exp = experiment_folder(args)
    if args.resume:
        restore_args(args, exp)  # the precision it started with, among the rest
        resolve_dataset(args)
    precision, args_text = resolve_args_precision(args, device, args_text, resumed=bool(args.resume))

    data_config = eval_data_config(args)
    with timed('data_generation'):  # the concepts dataset renders its images here
        train_set, train_eval_set, val_set, class_names = build_train_data(args, data_config)
    num_classes = args.num_classes or len(class_names)
    try:
        check_qpm_sizes(num_classes, args.n_features, args.n_per_class)
    except ValueError as e:
        raise UsageError(str(e)) from e
    random_seed(args.seed, 0)  # the same initial weights on every rank and in every run
    model = create_train_model(args, num_classes, data_config['input_size'][-1])
    check_input_size(model, tuple(data_config['input_size'][-2:]), bool(args.pretrained or args.pretrained_path))
    check_method_model(args, model)
    start_experiment(exp, args, args_text)  # inputs are valid: from here on the run writes its results
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    train_data, stats_data, val_data = train_set, train_eval_set, val_set  # images, or the backbone's cached maps
    reading = nullcontext()
    if args.feature_cache:
        train_data, stats_data, val_data = feature_caches(args, model, train_set, train_eval_set, val_set,
                                                          exp / FEATURE_CACHE, device)
        reading = model.reading_backbone_maps()
    loaders = (create_qpm_loader(train_data, args.batch_size, True, args.workers, args.distributed,
                                 loader_class=TimedLoader),
               create_qpm_loader(val_data, args.validation_batch_size or args.batch_size, num_workers=args.workers,
                                 loader_class=TimedLoader))
    with reading:
        fit, metrics = train_and_fit(args, model, loaders, stats_data, exp, device, data_config['input_size'][-2:])

    results = {}
    if args.rank == 0:
        results = export_and_report(args, model, fit, metrics, exp, (train_eval_set, val_set, class_names),
                                    data_config, device, precision)
        results['wall_time_s'] = round(time.time() - started, 1)
        results['timings'] = stage_seconds()  # where the time went (measured, never read back)
        with atomic_write(exp / RESULTS, 'w') as fh:
            json.dump(results, fh, indent=2)
        print(accuracy_line(results) + (
            f', concept recovery {results["concept_recovery"]:.3f}' if 'concept_recovery' in results else '') +
              f'; exported to {exp / EXPORT}')
    if args.distributed:
        torch.distributed.barrier()
    return results

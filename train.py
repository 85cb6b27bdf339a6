#!/usr/bin/env python3
""" QPM training script, in the style of timm's train.py.

Stages (docs/METHOD.md, "Pipeline"), each leaving its result in the experiment folder ``<output>/<experiment>/``:

    feature_cache/   with --feature-cache: the frozen backbone's maps, computed once (docs/FEATURE_CACHE.md)
    dense/       dense training, CE + Feature Diversity Loss (last.pth.tar, summary.csv)
    statistics.npz   one pass over the un-augmented training set (A, B, mean, std)
    gallery.npz      the feature gallery of the dense model's channels, collected on the statistics pass
    solution.json    the class -> feature assignment (CP-SAT)
    finetune/    fine-tuning with the binary head frozen (last.pth.tar, summary.csv)
    export/      model.safetensors + config.json + model card: loadable with timm's ``local-dir:``
    report/      the explanation report (index.html; --no-report skips it), also embedded in export/
    results.json     final accuracy (and concept recovery on the concepts dataset)

Kill it at any point and rerun the same command with ``--resume``: it continues after the last finished
epoch or stage and ends with the assignment of an uninterrupted run (every epoch is seeded from
``--seed`` and its number). Multi-GPU / multi-node: ``torchrun --nproc_per_node=N train.py ...`` (DDP); the
statistics are all-reduced and the solve runs on rank 0 and is broadcast.

The embedded default (no download, CPU, a few minutes):  python train.py -c qpm_timm/configs/concepts.yaml
"""
import argparse
import json
import logging
import math
import os
import sys
import time
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
import yaml
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    AverageMeter, CheckpointSaver, ParseKwargs, accuracy, dispatch_clip_grad, init_distributed_device, random_seed,
    update_summary)
from tqdm import tqdm

import qpm_timm
from qpm_timm import hub
from qpm_timm.atomic import atomic_write
from qpm_timm.data import create_qpm_split, get_class_names, qpm_data_config, with_transform
from qpm_timm.data.feature_cache import CACHE_DTYPES, ensure_feature_cache
from qpm_timm.data.loader import create_qpm_loader
from qpm_timm.explain import FeatureGallery, GalleryCollector, model_feature_table, write_report
from qpm_timm.losses import ActivationL1, FeatureDiversityLoss
from qpm_timm.metrics import concept_recovery
from qpm_timm.models.head import check_qpm_sizes
from qpm_timm.fit import fit_qpm
from qpm_timm.models import load_weights
from qpm_timm.solver import DEFAULT_EFFORT, DEFAULT_TIME_LIMIT
from qpm_timm.timing import stage_seconds, timed

_logger = logging.getLogger('train')
GALLERY_FILE = 'gallery.npz'  # the feature gallery collected on the statistics pass

config_parser = argparse.ArgumentParser(description='Training Config', add_help=False)
config_parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                           help='YAML config file specifying default arguments')

parser = argparse.ArgumentParser(description='QPM training (timm-style)')
group = parser.add_argument_group('Dataset parameters')
group.add_argument('--data-dir', metavar='DIR', default=None, help='path to dataset (root dir)')
group.add_argument('--dataset', metavar='NAME', default=None,
                   help='concepts (generated; the default without --data-dir) | cub | cars | aircraft | imagenet | '
                        'folder (the default with --data-dir: a class-per-folder tree) | any timm dataset')
group.add_argument('--train-split', metavar='NAME', default='train')
group.add_argument('--val-split', metavar='NAME', default='val')
group.add_argument('--dataset-args', type=yaml.safe_load, default=None, metavar='YAML',
                   help='extra dataset kwargs, e.g. "{images_per_class: 100}" or "{crop_to_bbox: true}"')
group = parser.add_argument_group('Model parameters')
group.add_argument('--model', default='qpm', metavar='MODEL',
                   help='a QPM architecture: qpm_resnet50_cub, ... or "qpm" with --backbone')
group.add_argument('--backbone', default=None, metavar='NAME',
                   help='timm backbone for --model qpm: a CNN (resnet18) or a ViT (vit_small_patch14_reg4_dinov2)')
group.add_argument('--adapter-depth', type=int, default=None, metavar='N',
                   help='layers of the token-wise MLP adapter between backbone and head (0: none; DINO-QPM: 4)')
group.add_argument('--adapter-hidden', type=int, default=None, metavar='N', help='its hidden width (default 2048)')
group.add_argument('--adapter-dim', type=int, default=None, metavar='N', help='its output channels (default 512)')
group.add_argument('--freeze-backbone', action=argparse.BooleanOptionalAction, default=False,
                   help='train only the adapter and the head; the backbone stays in eval mode (DINO-QPM)')
group.add_argument('--feature-cache', action=argparse.BooleanOptionalAction, default=False,
                   help='with --freeze-backbone: compute the backbone maps once, store them in <experiment>/'
                        'feature_cache/, and train, collect statistics and fine-tune from them')
group.add_argument('--cache-views', type=int, default=0, metavar='K',
                   help='training views in the cache: 0 = the un-augmented images; K > 0 = K augmented views, '
                        'epoch e reads view e mod K')
group.add_argument('--cache-dtype', default='float32', choices=CACHE_DTYPES,
                   help='storage type of the cached maps (float16 halves the disk; float32 keeps them exact)')
group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='backbone kwargs, e.g. stem_width=16 (YAML: model_kwargs: {stem_width: 16})')
group.add_argument('--reduced-strides', action=argparse.BooleanOptionalAction, default=None,
                   help='ResNet layer3/layer4 with stride 1 (the recipe for fine-grained data)')
group.add_argument('--pretrained', action='store_true', default=False,
                   help='start the dense stage from the backbone\'s timm pretrained weights (the tag in --backbone or '
                        'the variant\'s, e.g. resnet50.tv_in1k); a fitting pretrained classifier becomes the dense '
                        'head')
group.add_argument('--pretrained-path', default=None, metavar='FILE',
                   help='load the backbone\'s pretrained weights from this local file instead (implies --pretrained)')
group.add_argument('--initial-checkpoint', default='', metavar='PATH',
                   help='load these weights before training: a QPM checkpoint, or a timm / torchvision checkpoint of '
                        'the backbone architecture (its classifier becomes the dense head when the classes match)')
group.add_argument('--resume', nargs='?', const=True, default=False, metavar='EXPERIMENT_DIR',
                   help='continue the experiment after its last finished epoch or stage')
group.add_argument('--num-classes', type=int, default=None, metavar='N', help='default: from the dataset')
group.add_argument('--img-size', type=int, default=None, metavar='N', help='default: from the dataset')
group.add_argument('--crop-pct', type=float, default=None, metavar='PCT', help='eval crop (default: the dataset\'s)')
group.add_argument('--interpolation', default=None, metavar='NAME',
                   help='eval resize interpolation (default: the dataset\'s, bilinear)')
group.add_argument('--mean', type=float, nargs=3, default=None, metavar='MEAN', help='default: the dataset\'s')
group.add_argument('--std', type=float, nargs=3, default=None, metavar='STD', help='default: the dataset\'s')
group.add_argument('-b', '--batch-size', type=int, default=16, metavar='N')
group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
group.add_argument('--channels-last', action='store_true', default=False)
group.add_argument('--amp', action=argparse.BooleanOptionalAction, default=False,
                   help='bfloat16 autocast (--no-amp turns off a config\'s amp: true)')
group = parser.add_argument_group('QPM parameters')
group.add_argument('--n-features', type=int, default=50, help='n_f*: kept features (default 50)')
group.add_argument('--n-per-class', type=int, default=5, help='n_wc: features per class (default 5)')
group.add_argument('--fdl-beta', type=float, default=0.196, help='Feature Diversity Loss weight (ResNets: 0.196)')
group.add_argument('--l1-maps', type=float, default=0.0, help='dense stage: weight of mean |feature maps| (DINO-QPM)')
group.add_argument('--l1-pooled', type=float, default=0.0, help='dense stage: weight of mean |pooled features|')
group.add_argument('--finetune-fdl-beta', type=float, default=None, help='fine-tune FDL weight (default: --fdl-beta)')
group.add_argument('--finetune-l1-maps', type=float, default=0.0,
                   help='fine-tune: weight of mean |selected feature maps| (DINO-QPM: 5)')
group.add_argument('--finetune-l1-pooled', type=float, default=0.0,
                   help='fine-tune: weight of mean |selected pooled features| (DINO-QPM: 1)')
group.add_argument('--locality', action=argparse.BooleanOptionalAction, default=True,
                   help='keep the locality bias B in the solve\'s objective (DINO-QPM solves without it)')
group.add_argument('--skip-dense', action='store_true', default=False,
                   help='no dense training: statistics of the --initial-checkpoint model, or of the --pretrained one '
                        'when its classifier fits the classes (as the authors do for ImageNet)')
group.add_argument('--solver-effort', type=float, default=DEFAULT_EFFORT,
                   help='work budget of the solve in deterministic units: the same inputs, seed and effort give the '
                        'same assignment on an idle or a busy machine (default 10: ~8 s at CUB scale on 2 idle '
                        'cores; 40-100 for a better solution)')
group.add_argument('--solver-time-limit', type=float, default=DEFAULT_TIME_LIMIT,
                   help='wall-clock safety cap of the solve in seconds; a solve it cuts is reported (log, '
                        'solution.json, results.json) and may depend on machine load')
group.add_argument('--report', action=argparse.BooleanOptionalAction, default=True,
                   help='write the explanation report (<experiment>/report/index.html) and embed it in the export')
group.add_argument('--solver-log', action='store_true', default=False, help='show the solver progress')
group.add_argument('--finetune-epochs', type=int, default=40)
group.add_argument('--finetune-opt', default='sgd', metavar='OPTIMIZER', help='fine-tune optimizer (timm name)')
group.add_argument('--finetune-lr', type=float, default=1e-4)
group.add_argument('--finetune-weight-decay', type=float, default=None, help='default: --weight-decay')
group.add_argument('--finetune-momentum', type=float, default=0.95)
group.add_argument('--finetune-decay-epochs', type=float, default=10)
group = parser.add_argument_group('Optimizer / schedule (dense stage)')
group.add_argument('--opt', default='sgd', metavar='OPTIMIZER')
group.add_argument('--opt-eps', default=None, type=float)
group.add_argument('--opt-betas', default=None, type=float, nargs='+')
group.add_argument('--momentum', type=float, default=0.9)
group.add_argument('--weight-decay', type=float, default=5e-4)
group.add_argument('--clip-grad', type=float, default=None)
group.add_argument('--clip-mode', type=str, default='norm')
group.add_argument('--layer-decay', type=float, default=None)
group.add_argument('--lr', type=float, default=0.005, help='backbone learning rate (dense)')
group.add_argument('--head-lr-scale', type=float, default=2.0, help='head lr = lr * scale (recipe: 0.01 / 0.005)')
group.add_argument('--sched', default='step', metavar='SCHEDULER')
group.add_argument('--epochs', '--dense-epochs', dest='epochs', type=int, default=150, help='dense epochs')
group.add_argument('--decay-epochs', type=float, default=30)
group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+')
group.add_argument('--decay-rate', '--dr', type=float, default=0.4)
group.add_argument('--warmup-epochs', type=int, default=0)
group.add_argument('--warmup-lr', type=float, default=1e-5)
group.add_argument('--min-lr', type=float, default=0)
group.add_argument('--cooldown-epochs', type=int, default=0)
group.add_argument('--patience-epochs', type=int, default=10)
group.add_argument('--lr-cycle-mul', type=float, default=1.0)
group.add_argument('--lr-cycle-decay', type=float, default=0.5)
group.add_argument('--lr-cycle-limit', type=int, default=1)
group.add_argument('--lr-k-decay', type=float, default=1.0)
group.add_argument('--lr-noise', type=float, nargs='+', default=None)
group.add_argument('--lr-noise-pct', type=float, default=0.67)
group.add_argument('--lr-noise-std', type=float, default=1.0)
group.add_argument('--sched-on-updates', action='store_true', default=False)
group = parser.add_argument_group('Miscellaneous')
group.add_argument('--seed', type=int, default=42)
group.add_argument('--workers', '-j', type=int, default=4)
group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
group.add_argument('--output', default='output/train', metavar='PATH')
group.add_argument('--experiment', default='', metavar='NAME', help='default: <model>-<dataset>')
group.add_argument('--no-progress', action='store_true', default=False, help='no progress bars')


class TrainingError(Exception):
    """Bad input found before anything is written: message and exit code 2."""


def _parse_args(argv=None):
    args_config, remaining = config_parser.parse_known_args(argv)
    if args_config.config:
        if not os.path.isfile(args_config.config):
            raise TrainingError(f'config file {args_config.config} does not exist.')
        with open(args_config.config) as f:
            parser.set_defaults(**yaml.safe_load(f))
    args = parser.parse_args(remaining)
    return args, yaml.safe_dump(args.__dict__, default_flow_style=False)


# --- pieces of the pipeline ------------------------------------------------------------------------------------
def resolve_dataset(args) -> None:
    """timm's convention: ``--data-dir`` alone is a class-per-folder tree; nothing at all is the concepts dataset."""
    if args.dataset is None:
        args.dataset = 'folder' if args.data_dir else 'concepts'


def create_model(args, num_classes: int, img_size: int) -> qpm_timm.QPMModel:
    """The dense model of stage 1, with ``--pretrained`` backbone weights or the ``--initial-checkpoint``; a backbone
    built for one input size (a ViT) is built for the run's ``img_size`` (timm resamples pretrained position
    embeddings)."""
    kwargs = dict(num_classes=num_classes, n_features=args.n_features, n_per_class=args.n_per_class, head='dense',
                  **args.model_kwargs)
    if args.reduced_strides is not None:
        kwargs['reduced_strides'] = args.reduced_strides
    for name in ('adapter_depth', 'adapter_hidden', 'adapter_dim'):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.pretrained or args.pretrained_path:
        kwargs['pretrained_backbone'] = True
        if args.pretrained_path:
            kwargs['backbone_pretrained_cfg_overlay'] = dict(file=args.pretrained_path)
    if args.model == 'qpm':
        if not args.backbone:
            raise TrainingError('--model qpm needs --backbone (a timm CNN such as resnet18 or resnet50.tv_in1k).')
        kwargs['backbone'] = args.backbone
    elif args.model not in qpm_timm.models.VARIANT_ARGS:
        raise TrainingError(f'--model {args.model} is not a QPM architecture; use one of '
                            f'{sorted(qpm_timm.models.VARIANT_ARGS)} or "--model qpm --backbone {args.model}".')
    backbone = kwargs.get('backbone') or qpm_timm.models.VARIANT_ARGS[args.model]['backbone']
    arch = backbone.split('.')[0]  # a bad tag or name is the model's to refuse, with its own message
    if timm.is_model(arch) and getattr(timm.models.get_pretrained_cfg(arch), 'fixed_input_size', False):
        kwargs['img_size'] = img_size
    model = timm.create_model(args.model, **kwargs)
    if args.initial_checkpoint:
        load_weights(model, hub.read_weights(args.initial_checkpoint), source=args.initial_checkpoint)
    if args.freeze_backbone:
        model.freeze_backbone()
    check_trainable(model, args)
    if args.skip_dense and not (args.initial_checkpoint or model.adopted_classifier):
        why = (f'the pretrained classifier of {model.backbone_name} does not fit the {num_classes} classes'
               if kwargs.get('pretrained_backbone') else 'neither --initial-checkpoint nor --pretrained is given')
        raise TrainingError(f'--skip-dense needs a trained dense model ({why}): give --initial-checkpoint FILE, or '
                            f'--pretrained weights whose classifier fits the classes (the ImageNet route), or train '
                            f'the dense stage.')
    return model


def check_trainable(model: qpm_timm.QPMModel, args) -> None:
    """Refuse a stage that would run epochs with nothing to train (e.g. a frozen backbone without an adapter in
    the fine-tune, where the QPM head's assignment is fixed)."""
    frozen = ' (--freeze-backbone)' if model.backbone_frozen else ''
    dense = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tuned = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith('head.'))
    if args.epochs > 0 and not args.skip_dense and dense == 0:
        raise TrainingError(f'the dense stage would train nothing: no parameter of the model requires a gradient'
                            f'{frozen}; use --skip-dense or unfreeze the backbone.')
    if args.finetune_epochs > 0 and tuned == 0:
        raise TrainingError(f'the fine-tune stage would train nothing: the QPM head is fixed and the backbone is '
                            f'frozen{frozen} with no adapter; add an adapter (--adapter-depth N) or set '
                            f'--finetune-epochs 0.')
    if args.feature_cache and not model.backbone_frozen:
        raise TrainingError('--feature-cache needs --freeze-backbone: the maps of a backbone that trains change '
                            'every step, so they cannot be cached.')


class WithFeatures(nn.Module):
    """``forward`` = ``forward_with_features`` so that DDP sees the pass that computes the loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_with_features(x)


def to_device(x, y, device, args):
    """A batch on the device, images channels-last with ``--channels-last``."""
    x = x.to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device)


def train_one_epoch(epoch, model, step_model, loader, optimizer, scheduler, losses_fn, args, device, amp):
    model.train()
    fdl, l1 = losses_fn
    losses = AverageMeter()
    num_updates = epoch * len(loader)
    bar = tqdm(loader, desc=f'epoch {epoch}', disable=args.no_progress or args.rank != 0, leave=False)
    for x, y in bar:
        x, y = to_device(x, y, device, args)
        with amp():
            out = step_model(x)
            loss = (F.cross_entropy(out.logits, y) + fdl(out.feature_maps, out.logits, model.class_weights)
                    + l1(out.feature_maps, out.pooled))
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
    return OrderedDict(loss=losses.avg)


@torch.no_grad()
def evaluate(model, loader, device, args, amp):
    """Top-1/top-5 over the whole validation set (every rank sees all of it)."""
    model.eval()
    losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter()
    for x, y in loader:
        x, y = to_device(x, y, device, args)
        with amp():
            logits = model(x)
        acc1, acc5 = accuracy(logits.float(), y, topk=(1, min(5, logits.shape[1])))
        losses.update(F.cross_entropy(logits.float(), y).item(), x.shape[0])
        top1.update(acc1.item(), x.shape[0])
        top5.update(acc5.item(), x.shape[0])
    return OrderedDict(loss=losses.avg, top1=top1.avg, top5=top5.avg)


def stage_losses(name: str, args) -> tuple:
    """The stage's terms beside cross-entropy: the FDL and DINO-QPM's L1 activation terms."""
    if name == 'finetune':
        beta = args.fdl_beta if args.finetune_fdl_beta is None else args.finetune_fdl_beta
        return FeatureDiversityLoss(beta=beta), ActivationL1(args.finetune_l1_maps, args.finetune_l1_pooled)
    return FeatureDiversityLoss(beta=args.fdl_beta), ActivationL1(args.l1_maps, args.l1_pooled)


def run_stage(name, model, loaders, args, device, amp, epochs, optimizer, scheduler, folder: Path, start_epoch):
    """Train ``epochs`` epochs, checkpointing every one (``last.pth.tar``) with timm's CheckpointSaver."""
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
        random_seed(args.seed + 1000 * (name == 'finetune') + epoch, args.rank)  # same batches after a resume
        if hasattr(train_loader.sampler, 'set_epoch'):
            train_loader.sampler.set_epoch(epoch)
        if hasattr(train_loader.dataset, 'set_epoch'):  # a feature cache with augmented views
            train_loader.dataset.set_epoch(epoch)
        train_metrics = train_one_epoch(epoch, model, step_model, train_loader, optimizer, scheduler, losses_fn, args,
                                        device, amp)
        metrics = evaluate(model, val_loader, device, args, amp)
        if scheduler is not None:
            scheduler.step(epoch + 1, metrics['top1'])
        if saver is not None:
            update_summary(epoch, train_metrics, metrics, str(folder / 'summary.csv'),
                           lr=optimizer.param_groups[0]['lr'], write_header=epoch == 0)
            saver.save_checkpoint(epoch, metric=metrics['top1'])
        _logger.info(f'{name} epoch {epoch}: train loss {train_metrics["loss"]:.4f}, val top1 {metrics["top1"]:.2f}')
    return metrics


def resume_epoch(model, optimizer, folder: Path) -> int:
    """Epoch to start from: after the last checkpointed one of this stage, or 0."""
    last = folder / 'last.pth.tar'
    if not last.is_file():
        return 0
    from timm.models import resume_checkpoint
    epoch = resume_checkpoint(model, str(last), optimizer, log_info=False, weights_only=False)
    return 0 if epoch is None else epoch


def experiment_folder(args) -> Path:
    """The experiment folder (not created yet); refuses to overwrite an earlier run unless ``--resume``."""
    backbone = str(args.backbone).split('.')[0]
    name = args.experiment or f'{args.model if args.model != "qpm" else "qpm_" + backbone}-{args.dataset}'
    exp = Path(args.resume) if isinstance(args.resume, str) else Path(args.output) / name
    if exp.is_dir() and any(exp.iterdir()) and not args.resume:
        raise TrainingError(f'{exp} already holds a run; pass --resume to continue it or choose --experiment.')
    if args.resume and not (exp / 'args.yaml').is_file():
        raise TrainingError(f'nothing to resume in {exp} (no args.yaml).')
    return exp


def start_experiment(exp: Path, args, args_text: str) -> None:
    """Create the experiment folder and record the arguments (rank 0), once every input has been checked."""
    if args.rank != 0:
        return
    try:
        exp.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            (exp / 'args.yaml').write_text(args_text)
    except OSError as e:
        raise TrainingError(f'cannot write to the output folder {exp} ({e}); choose a writable --output.') from e


def check_args(args) -> None:
    try:
        check_qpm_sizes(0, args.n_features, args.n_per_class)
    except ValueError as e:
        raise TrainingError(f'--n-features/--n-per-class: {e}') from e
    for flag in ('l1_maps', 'l1_pooled', 'finetune_l1_maps', 'finetune_l1_pooled', 'cache_views'):
        if not getattr(args, flag) >= 0:
            raise TrainingError(f'--{flag.replace("_", "-")} must be >= 0, got {getattr(args, flag)}.')
    if not (math.isfinite(args.solver_effort) and args.solver_effort > 0):
        raise TrainingError(f'--solver-effort must be a positive finite number, got {args.solver_effort}.')
    for flag, path in (('--initial-checkpoint', args.initial_checkpoint), ('--pretrained-path', args.pretrained_path)):
        if path and not os.path.isfile(path):
            raise TrainingError(f'{flag} {path} does not exist.')


def eval_data_config(args) -> dict:
    """The timm data config of the validation transform: the dataset's recipe, flags overriding. The export
    records it, so timm's ``resolve_data_config(model=...)`` evaluates the model as this run did."""
    extra = args.dataset_args or {}
    cfg = qpm_data_config(args.dataset, args.img_size, crop_to_bbox=extra.get('crop_to_bbox', True))
    overrides = dict(crop_pct=args.crop_pct, interpolation=args.interpolation,
                     mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None)
    return {**cfg, **{k: v for k, v in overrides.items() if v is not None}}


def build_data(args, data_config: dict):
    """Train (augmented), train-eval (the same images with val's eval transform, for the statistics) and val
    datasets, class names."""
    extra = dict(args.dataset_args or {})
    train = create_qpm_split(args.dataset, args.data_dir, args.train_split, is_training=True, data_config=data_config,
                             **extra)
    val = create_qpm_split(args.dataset, args.data_dir, args.val_split, is_training=False, data_config=data_config,
                           **extra)
    return train, with_transform(train, val.transform), val, get_class_names(train)


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


def concept_score(model, dataset, device, args):
    """Concept recovery of the final QPM on the concepts dataset (validation images)."""
    loader = create_qpm_loader(dataset, args.validation_batch_size or args.batch_size, num_workers=args.workers)
    pooled = []
    model.eval()
    with torch.no_grad():
        for x, _ in loader:
            pooled.append(model.forward_with_features(x.to(device)).pooled.float().cpu())
    return concept_recovery(torch.cat(pooled), dataset.concept_presence, model.class_weights.cpu(),
                            dataset.class_concepts)


def train_and_fit(args, model, loaders, stats_data, exp: Path, device, amp, image_size) -> tuple:
    """Stages 1-4 (docs/METHOD.md, "Pipeline") on images or, inside ``model.reading_backbone_maps()``, on the feature
    cache: dense training, statistics (the feature gallery rides along), solve, QPM head, fine-tune; returns the
    :class:`~qpm_timm.fit.QPMFit` and the last validation metrics."""
    # stage 1: dense training
    if not args.skip_dense and args.epochs > 0:
        trainable = [[p for p in m.parameters() if p.requires_grad] for m in (model.backbone, model.adapter)]
        groups = [{'params': params} for params in trainable if params] + [
            {'params': list(model.head.parameters()), 'lr': args.lr * args.head_lr_scale}]
        optimizer = create_optimizer_v2(groups, **optimizer_kwargs(cfg=args))
        scheduler, _ = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=len(loaders[0]))
        start = resume_epoch(model, optimizer, exp / 'dense')
        with timed('dense'):
            run_stage('dense', model, loaders, args, device, amp, args.epochs, optimizer, scheduler, exp / 'dense',
                      start)

    # stages 2-3: statistics of the dense model on the un-augmented training set (the explanations' feature
    # gallery rides along), solve (rank 0), QPM head
    collector = GalleryCollector(image_size=image_size if model.input_is_backbone_maps else None)
    stats_loader = create_qpm_loader(stats_data, args.validation_batch_size or args.batch_size, num_workers=args.workers,
                                     shard=True)
    with timed('statistics_and_solve'):
        fit = fit_qpm(model, stats_loader,
                      statistics_path=exp / 'statistics.npz', solution_path=exp / 'solution.json', device=device,
                      amp=args.amp, progress=not args.no_progress and args.rank == 0,
                      observers=[collector] if args.report else (), effort=args.solver_effort,
                      time_limit=args.solver_time_limit, seed=args.seed, log=args.solver_log, locality=args.locality)
    if collector.seen:  # the pass ran in this process (not read back after a resume)
        gallery = collector.gather(all_ranks=True)
        if args.rank == 0:
            gallery.save(exp / GALLERY_FILE)

    # stage 4: fine-tune with the binary head frozen (only trainable parameters)
    metrics = {}
    if args.finetune_epochs > 0:
        decay = args.weight_decay if args.finetune_weight_decay is None else args.finetune_weight_decay
        optimizer = create_optimizer_v2([p for p in model.parameters() if p.requires_grad], opt=args.finetune_opt,
                                        lr=args.finetune_lr, momentum=args.finetune_momentum, weight_decay=decay)
        scheduler, _ = create_scheduler_v2(optimizer, sched='step', num_epochs=args.finetune_epochs,
                                           decay_epochs=args.finetune_decay_epochs, decay_rate=args.decay_rate)
        start = resume_epoch(model, optimizer, exp / 'finetune')
        with timed('finetune'):
            metrics = run_stage('finetune', model, loaders, args, device, amp, args.finetune_epochs, optimizer,
                                scheduler, exp / 'finetune', start)
    if not metrics:
        metrics = evaluate(model, loaders[1], device, args, amp)
    return fit, metrics


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args, args_text = _parse_args(argv)
    check_args(args)
    device = init_distributed_device(args)
    resolve_dataset(args)
    exp = experiment_folder(args)
    if args.resume:  # the experiment's own arguments, except how to run it
        saved = yaml.safe_load((exp / 'args.yaml').read_text())
        keep = ('resume', 'device', 'workers', 'no_progress', 'solver_log', 'rank', 'world_size', 'local_rank',
                'distributed')
        args.__dict__.update({k: v for k, v in saved.items() if k not in keep and k in args.__dict__})
        resolve_dataset(args)
    started = time.time()
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else nullcontext

    data_config = eval_data_config(args)
    train_set, train_eval_set, val_set, class_names = build_data(args, data_config)
    num_classes = args.num_classes or len(class_names)
    try:
        check_qpm_sizes(num_classes, args.n_features, args.n_per_class)
    except ValueError as e:
        raise TrainingError(str(e)) from e
    random_seed(args.seed, 0)  # the same initial weights on every rank and in every run
    model = create_model(args, num_classes, data_config['input_size'][-1])
    start_experiment(exp, args, args_text)  # inputs are valid: from here on the run writes its results
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    vb = args.validation_batch_size or args.batch_size
    train_data, stats_data, val_data = train_set, train_eval_set, val_set  # images, or the backbone's cached maps
    reading = nullcontext()
    if args.feature_cache:
        train_data, stats_data, val_data = feature_caches(args, model, train_set, train_eval_set, val_set,
                                                          exp / 'feature_cache', device)
        reading = model.reading_backbone_maps()
    loaders = (create_qpm_loader(train_data, args.batch_size, True, args.workers, args.distributed),
               create_qpm_loader(val_data, vb, num_workers=args.workers))
    with reading:
        fit, metrics = train_and_fit(args, model, loaders, stats_data, exp, device, amp,
                                     data_config['input_size'][-2:])
    solution = fit.solution

    # stage 5: export, report
    results = dict(top1=metrics['top1'], top5=metrics['top5'], objective=solution.objective,
                   solver_status=solution.status, solver_bound=solution.bound, solver_gap=solution.gap,
                   solver_effort=solution.effort, solver_effort_used=solution.effort_used,
                   solver_cut_by_wall_clock=solution.cut_by_wall_clock)
    if args.rank == 0:
        report = None
        if args.report:
            with timed('report'):
                report = write_report(model.eval(), exp / 'report', FeatureGallery.load(exp / GALLERY_FILE)
                                      if (exp / GALLERY_FILE).is_file() else None,
                                      train_eval_set, val_set, class_names, device=device, amp=args.amp,
                                      batch_size=vb, num_workers=args.workers, progress=not args.no_progress)
        names = report.names.labels if report else None
        with timed('recovery'):
            recovery = concept_score(model, val_set, device, args) if hasattr(val_set, 'class_concepts') else None
        if recovery is not None:
            results['concept_recovery'] = recovery.score
        card = {k: v for k, v in results.items() if isinstance(v, float) and not isinstance(v, bool)}
        with timed('export'):
            hub.save_pretrained(model.eval(), exp / 'export', label_names=class_names, data_config=data_config,
                                feature_names=names, report_dir=report.folder if report else None,
                                results=[hub.RunResults('train.py', card, dataset=args.dataset, split=args.val_split)])
        print(model_feature_table(model, class_names, max_rows=50, names=names))
        if recovery is not None:
            print(recovery.format(getattr(val_set, 'concept_names', None)))
        results['wall_time_s'] = round(time.time() - started, 1)
        results['timings'] = stage_seconds()  # seconds per stage (qpm_timm/timing.py); measured, never read
        with atomic_write(exp / 'results.json') as fh:
            json.dump(results, fh, indent=2)
        if solution.cut_by_wall_clock:
            print(f'WARNING: the solve was cut by --solver-time-limit {args.solver_time_limit} s before its effort '
                  f'was spent; the assignment may depend on machine load (raise the limit or lower --solver-effort).')
        print(f'solver: {solution.summary()}')
        if report:
            print(f'explanation report: open {report.index} in a browser')
        print(f'validation top-1 {results["top1"]:.2f} %' + (
            f', concept recovery {results["concept_recovery"]:.3f}' if 'concept_recovery' in results else '') +
              f'; exported to {exp / "export"}')
    if args.distributed:
        torch.distributed.barrier()
    return results


if __name__ == '__main__':
    try:
        main()
    except (TrainingError, ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)

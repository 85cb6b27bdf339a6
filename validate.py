#!/usr/bin/env python3
""" QPM validation script, in the style of timm's validate.py.

Accuracy (top-1/top-5, as timm reports it) of any timm model and, for a QPM, the method's interpretability
metrics (docs/METHOD.md, "Interpretability metrics"; :mod:`qpm_timm.metrics`):

    sid@k                 on the evaluated split (k = min(5, n_per_class), the paper's SID@5)
    class_independence    on the training split with eval transforms (as the authors do)
    contrastiveness       on the training split with eval transforms
    feature_correlation   on the training split with eval transforms, features as the head sees them
    structural_grounding  CUB only, when the dataset has its class-attribute matrix
    concept_recovery      the generated concepts dataset only, on the evaluated split

Metric values are fractions in [0, 1] (top1/top5 are percentages, as in timm); the log prints everything
in percent.

    python validate.py --model local-dir:output/train/qpm_resnet18-concepts/export --pretrained
    python validate.py --model qpm --backbone resnet18 --checkpoint model.safetensors --dataset concepts
    python validate.py --model resnet50 --pretrained --dataset imagenet --data-dir /data/in1k --no-interpretability

Bad input (a missing data folder, a model that is not a QPM while the metrics need one, weights of another
architecture, an unwritable results file) ends with a message on stderr and exit code 2; the results file is
written atomically after every metric succeeded, so an earlier one is never damaged.
"""
import argparse
import csv
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import timm
import yaml
from timm.data import create_transform, resolve_data_config
from timm.utils import AverageMeter, accuracy

import qpm_timm
from qpm_timm import hub
from qpm_timm.atomic import atomic_write
from qpm_timm.cli import BAD_INPUT, exit_code
from qpm_timm.data import create_qpm_dataset, get_class_names, qpm_data_config, with_transform
from qpm_timm.data.loader import create_qpm_loader
from qpm_timm.metrics import (
    class_independence, concept_recovery, contrastiveness, feature_correlation, sid_at_k, structural_grounding,
)

_logger = logging.getLogger('validate')

_NOT_QPM = 'is not a QPM (solve and fine-tune it with train.py first)'



def _yaml_mapping(text: str) -> Dict[str, Any]:
    """``--dataset-args``: a YAML mapping (argparse turns the error into a usage message and exit code 2)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f'not valid YAML ({e})') from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'must be a YAML mapping such as "{{images_per_class: 10}}", got {text!r}')
    return value


parser = argparse.ArgumentParser(
    description='QPM validation (timm-style): accuracy and, for QPM models, the interpretability metrics',
    epilog='Interpretability: by default the model must be a QPM (a QPMModel with its binary head); a dense model '
           'or any other timm model is refused with exit code 2. --no-interpretability evaluates any model '
           'for top-1/top-5 only. Exit code 2 on bad input; the results file is written only after every '
           'metric succeeded (atomically), so an earlier results file survives a failed run.')
group = parser.add_argument_group('Dataset parameters')
group.add_argument('--data-dir', metavar='DIR', default=None, help='path to dataset (root dir); none for concepts')
group.add_argument('--dataset', metavar='NAME', default=None,
                   help='concepts (generated; the default without --data-dir) | cub | cars | aircraft | imagenet | '
                        'folder (the default with --data-dir: a class-per-folder tree) | any timm dataset')
group.add_argument('--split', metavar='NAME', default='val', help='split to evaluate (default: val)')
group.add_argument('--train-split', metavar='NAME', default='train',
                   help='split for Class-Independence, Contrastiveness and Correlation (default: train)')
group.add_argument('--dataset-args', type=_yaml_mapping, default=None, metavar='YAML',
                   help='extra dataset kwargs, e.g. "{images_per_class: 100}" or "{crop_to_bbox: false}"')
group.add_argument('--img-size', type=int, default=None, metavar='N',
                   help='input image size (default: the model\'s data config, as timm resolves it)')
group.add_argument('--crop-pct', type=float, default=None, metavar='PCT', help='eval crop (default: the model\'s)')
group.add_argument('--crop-mode', default=None, metavar='MODE', help='center | squash | border (default: the model\'s)')
group.add_argument('--interpolation', default=None, metavar='NAME', help='resize interpolation (default: the model\'s)')
group.add_argument('--mean', type=float, nargs=3, default=None, metavar='MEAN', help='default: the model\'s')
group.add_argument('--std', type=float, nargs=3, default=None, metavar='STD', help='default: the model\'s')
group.add_argument('--workers', '-j', type=int, default=4, metavar='N', help='data loading processes')
group = parser.add_argument_group('Model parameters')
group.add_argument('--model', '-m', default='qpm', metavar='NAME',
                   help='a timm model name, a QPM variant (qpm_resnet50_cub, ...), "qpm" with --backbone, '
                        '"local-dir:PATH" or "hf-hub:org/repo"')
group.add_argument('--backbone', default=None, metavar='NAME', help='timm CNN for --model qpm (e.g. resnet18)')
group.add_argument('--reduced-strides', action=argparse.BooleanOptionalAction, default=None,
                   help='--model qpm: ResNet layer3/layer4 with stride 1 (must match the training run)')
group.add_argument('--n-features', type=int, default=None, metavar='N',
                   help='--model qpm / QPM variants: n_f* (default: from the checkpoint, else 50)')
group.add_argument('--n-per-class', type=int, default=None, metavar='N',
                   help='--model qpm / QPM variants: n_wc (default: from the checkpoint, else 5)')
group.add_argument('--num-classes', type=int, default=None, metavar='N',
                   help='default: from the dataset (from config.json for local-dir:/hf-hub: models)')
group.add_argument('--pretrained', action='store_true', default=False,
                   help='load the model\'s own weights (timm pretrained; the weights of local-dir:/hf-hub:)')
group.add_argument('--checkpoint', default='', metavar='PATH',
                   help='load these weights (.safetensors or timm checkpoint); the head state follows them')
group.add_argument('-b', '--batch-size', type=int, default=64, metavar='N')
group.add_argument('--amp', action='store_true', default=False, help='bfloat16 autocast')
group.add_argument('--channels-last', action='store_true', default=False)
group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
group = parser.add_argument_group('Results')
group.add_argument('--interpretability', action=argparse.BooleanOptionalAction, default=True,
                   help='compute the QPM metrics; the model must then be a QPM (default). '
                        '--no-interpretability: top-1/top-5 of any model')
group.add_argument('--results-file', default='', metavar='FILENAME', help='write the results here')
group.add_argument('--results-format', default=None, choices=('csv', 'json'),
                   help='default: json for a *.json results file, else csv')


class ValidationError(Exception):
    """Bad input: message on stderr and exit code 2."""


# --- input checks ------------------------------------------------------------------------------------------------
def check_results_file(path: str) -> None:
    """Fail before any work when the results file cannot be written (its folder is missing or read-only)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValidationError(f'--results-file {path} is a folder; give a file name.')
    if not os.path.isdir(folder):
        raise ValidationError(f'cannot write --results-file {path}: folder {folder} does not exist.')
    try:
        fd, probe = tempfile.mkstemp(prefix='.validate.', dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValidationError(f'cannot write --results-file {path} ({e}); choose a writable location.') from e


def results_format(args) -> str:
    if args.results_format:
        return args.results_format
    return 'json' if args.results_file.lower().endswith('.json') else 'csv'


def write_results(path: str, results: Dict[str, Any], fmt: str = 'csv') -> None:
    """timm's ``write_results`` (csv: header + one row; json), written to a temporary file and moved into place."""
    if fmt == 'json':
        text = json.dumps(results, indent=4) + '\n'
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(results))
        writer.writeheader()
        writer.writerow(results)
        text = buf.getvalue()
    with atomic_write(path, newline='') as f:
        f.write(text)


# --- data --------------------------------------------------------------------------------------------------------
def resolve_dataset(args) -> None:
    """timm's convention: ``--data-dir`` alone is a class-per-folder tree; nothing at all is the concepts dataset."""
    if args.dataset is None:
        args.dataset = 'folder' if args.data_dir else 'concepts'


def build_dataset(args, split: str):
    """The images of ``split``; the eval transform is set once the model's data config is known."""
    return create_qpm_dataset(args.dataset, args.data_dir, split=split, **(args.dataset_args or {}))


def resolve_eval_config(args, model: nn.Module) -> Dict[str, Any]:
    """The eval data config as timm's validate.py resolves it (``resolve_data_config(args, model=model)``): the
    model's ``pretrained_cfg`` (an export records what its training run validated with), flags overriding. Only
    the generic ``qpm`` architecture built by name carries no data config of its own (its backbone's ImageNet
    defaults): it gets the dataset's recipe config instead."""
    if args.model == 'qpm':
        source = qpm_data_config(args.dataset, crop_to_bbox=(args.dataset_args or {}).get('crop_to_bbox', True))
    else:
        source = model.pretrained_cfg
    return resolve_data_config(vars(args), pretrained_cfg=source)


# --- model -------------------------------------------------------------------------------------------------------
def _is_file_model(name: str) -> bool:
    return name.startswith(('local-dir:', 'hf-hub:', 'hf_hub:'))


def _is_qpm_arch(name: str) -> bool:
    return name == 'qpm' or name in qpm_timm.models.VARIANT_ARGS


def qpm_sizes_from_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """``n_features`` / ``n_per_class`` of a QPM checkpoint (its selection and binary assignment); {} if dense."""
    selection, weight = state_dict.get('head.selection'), state_dict.get('head.fc.weight')
    if selection is None:
        return {}
    sizes = dict(n_features=int(selection.numel()))
    if weight is not None and weight.dim() == 2 and weight.shape[0]:
        sizes['n_per_class'] = int(weight[0].sum().round())
    return sizes


def create_model(args, num_classes: int, state_dict: Optional[Dict[str, torch.Tensor]]) -> nn.Module:
    """The model of ``--model`` with ``--pretrained`` weights or the ``--checkpoint`` state dict loaded."""
    name = args.model
    if args.backbone and name != 'qpm':
        raise ValidationError(f'--backbone applies to --model qpm only (got --model {name}).')
    kwargs: Dict[str, Any] = {}
    if _is_file_model(name):
        if args.num_classes:
            kwargs['num_classes'] = args.num_classes
        for key in ('n_features', 'n_per_class', 'reduced_strides'):
            if getattr(args, key) is not None:
                kwargs[key] = getattr(args, key)
    elif _is_qpm_arch(name):
        if name == 'qpm':
            if not args.backbone:
                raise ValidationError('--model qpm needs --backbone (the timm CNN it was trained on, e.g. resnet18).')
            kwargs['backbone'] = args.backbone
        sizes = qpm_sizes_from_state_dict(state_dict) if state_dict is not None else {}
        kwargs['n_features'] = args.n_features or sizes.get('n_features')
        kwargs['n_per_class'] = args.n_per_class or sizes.get('n_per_class')
        kwargs['reduced_strides'] = args.reduced_strides
        kwargs['num_classes'] = num_classes  # sizes are checked by the model (check_qpm_sizes: ValueError)
    else:
        extra = [f'--{k.replace("_", "-")}' for k in ('n_features', 'n_per_class', 'reduced_strides')
                 if getattr(args, k) is not None]
        if extra:
            raise ValidationError(f'{", ".join(extra)} apply to QPM models only, not to --model {name}.')
        kwargs['num_classes'] = num_classes
    try:
        model = timm.create_model(name, pretrained=args.pretrained, **kwargs)
    except RuntimeError as e:  # timm: unknown model, no pretrained weights, ...
        raise ValidationError(f'cannot create --model {name}: {e}') from e
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as e:  # plain timm models; a QPMModel raises ValueError itself
            raise ValidationError(f'--checkpoint {args.checkpoint} does not fit --model {name}: {e}') from e
    return model


def check_model(model: nn.Module, args, num_classes: int) -> None:
    """The model's classes match the dataset's; a QPM where the interpretability metrics need one."""
    model_classes = getattr(model, 'num_classes', None)
    if model_classes is not None and model_classes != num_classes:
        raise ValidationError(f'--model {args.model} has {model_classes} classes but the {args.dataset} dataset has '
                              f'{num_classes}; evaluate it on its own dataset (or pass matching --num-classes / '
                              f'--dataset-args).')
    if args.interpretability and not getattr(model, 'is_qpm', False):
        kind = 'a dense QPMModel' if hasattr(model, 'is_qpm') else f'a plain {type(model).__name__}'
        raise ValidationError(f'--model {args.model} ({kind}) {_NOT_QPM}; pass --no-interpretability to get '
                              f'its top-1/top-5 only.')


# --- passes over the data ----------------------------------------------------------------------------------------
def _batches(model, loader, device, args):
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else nullcontext
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), amp():
            if hasattr(model, 'forward_with_features'):
                out = model.forward_with_features(x)
            else:
                out = (model(x), None, None)
        yield out, y


def evaluate(model, loader, device, args, sid_k: Optional[int]) -> Dict[str, Any]:
    """top-1/top-5 (percent) and, with ``sid_k``, SID@k and the pooled features of the evaluated split."""
    top1, top5 = AverageMeter(), AverageMeter()
    sid, pooled = [], []
    weights = model.class_weights.detach().float() if sid_k else None
    started = time.time()
    for (logits, maps, feats), y in _batches(model, loader, device, args):
        logits = logits.float()
        acc1, acc5 = accuracy(logits, y, topk=(1, min(5, logits.shape[1])))
        top1.update(acc1.item(), y.shape[0])
        top5.update(acc5.item(), y.shape[0])
        if sid_k:
            sid.append(sid_at_k(maps.float(), weights, logits.argmax(1), k=sid_k).cpu())
            pooled.append(feats.float().cpu())
    _logger.info(f'evaluated {top1.count} images in {time.time() - started:.1f} s')
    out = dict(top1=top1.avg, top5=top5.avg)
    if sid_k:
        out['sid'] = float(torch.nanmean(torch.cat(sid)))
        out['pooled'] = torch.cat(pooled)
    return out


def pooled_features(model, loader, device, args) -> Tuple[torch.Tensor, np.ndarray]:
    """Pooled features (raw, before the head's normalisation) and labels of a whole split."""
    pooled, labels = [], []
    for (_, _, feats), y in _batches(model, loader, device, args):
        pooled.append(feats.float().cpu())
        labels.append(y.cpu())
    return torch.cat(pooled), torch.cat(labels).numpy()


def interpretability(model, train_pooled: torch.Tensor, train_labels: np.ndarray, eval_out: Dict[str, Any],
                     eval_set, sid_k: int) -> Dict[str, float]:
    """The QPM metrics (module docstring), each as :mod:`qpm_timm.metrics` computes it."""
    head = model.head
    weights = model.class_weights.detach().float().cpu()
    metrics = OrderedDict()
    metrics[f'sid@{sid_k}'] = eval_out['sid']
    metrics['class_independence'] = class_independence(train_pooled, train_labels, model.num_classes)
    metrics['contrastiveness'] = contrastiveness(train_pooled)
    metrics['feature_correlation'] = feature_correlation(train_pooled, mean=head.mean.cpu(), std=head.std.cpu())
    attributes = getattr(eval_set, 'class_attributes', None)  # CUB with its attribute files
    if attributes is not None:
        c = weights.shape[0]
        metrics['structural_grounding'] = structural_grounding(weights, attributes, top=min(50, c * (c - 1)))
    if hasattr(eval_set, 'class_concepts') and hasattr(eval_set, 'concept_presence'):
        recovery = concept_recovery(eval_out['pooled'], eval_set.concept_presence, weights, eval_set.class_concepts)
        metrics['concept_recovery'] = recovery.score
        _logger.info(recovery.format(getattr(eval_set, 'concept_names', None)))
    return metrics


# --- main --------------------------------------------------------------------------------------------------------
def main(argv=None) -> Dict[str, Any]:
    """Validate ``--model`` and return the results (timm's fields, plus the QPM metrics)."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = parser.parse_args(argv)
    if args.results_file:
        check_results_file(args.results_file)
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise ValidationError(f'--checkpoint {args.checkpoint} does not exist.')
    if args.batch_size < 1:
        raise ValidationError(f'-b/--batch-size must be >= 1, got {args.batch_size}.')
    device = torch.device(args.device)

    resolve_dataset(args)
    eval_set = build_dataset(args, args.split)
    num_classes = args.num_classes or len(get_class_names(eval_set))

    state_dict = hub.read_weights(args.checkpoint) if args.checkpoint else None
    if state_dict is None and not args.pretrained:
        _logger.warning(f'neither --pretrained nor --checkpoint: evaluating randomly initialised {args.model} weights')
    model = create_model(args, num_classes, state_dict)
    check_model(model, args, num_classes)
    model.to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    data_config = resolve_eval_config(args, model)
    transform = create_transform(**data_config)
    eval_set = with_transform(eval_set, transform)
    param_count = sum(p.numel() for p in model.parameters())
    _logger.info(f'model {args.model} created, param count: {param_count}')

    sid_k = min(5, model.n_per_class) if args.interpretability else None
    loader = create_qpm_loader(eval_set, args.batch_size, num_workers=args.workers)
    eval_out = evaluate(model, loader, device, args, sid_k)
    results = OrderedDict(
        model=args.model,
        top1=round(eval_out['top1'], 4), top1_err=round(100 - eval_out['top1'], 4),
        top5=round(eval_out['top5'], 4), top5_err=round(100 - eval_out['top5'], 4),
        param_count=round(param_count / 1e6, 2),
        img_size=data_config['input_size'][-1], crop_pct=data_config['crop_pct'],
        interpolation=data_config['interpolation'])
    _logger.info(f' * Acc@1 {results["top1"]:.3f} ({results["top1_err"]:.3f}) '
                 f'Acc@5 {results["top5"]:.3f} ({results["top5_err"]:.3f})')

    if args.interpretability:
        train_set = with_transform(build_dataset(args, args.train_split), transform)
        train_loader = create_qpm_loader(train_set, args.batch_size, num_workers=args.workers)
        train_pooled, train_labels = pooled_features(model, train_loader, device, args)
        metrics = interpretability(model, train_pooled, train_labels, eval_out, eval_set, sid_k)
        results.update(metrics)
        _logger.info(' * ' + ', '.join(f'{k} {100 * v:.2f} %' for k, v in metrics.items()))

    if args.results_file:
        write_results(args.results_file, results, results_format(args))
        _logger.info(f'results written to {args.results_file}')
    return results


def cli(argv=None) -> int:
    """``main`` with bad input mapped to a message on stderr and exit code 2."""
    return exit_code(main, argv, BAD_INPUT + (ValidationError,))


if __name__ == '__main__':
    sys.exit(cli())

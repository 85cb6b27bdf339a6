"""What ``validate.py`` computes: timm's result fields and, for a QPM, the interpretability metrics
(docs/METHOD.md, "Interpretability metrics"; :mod:`qpm_timm.metrics`), written atomically to a results file."""
import csv
import io
import json
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Any, Dict

import torch
from timm.data import create_transform

from ..atomic import atomic_write
from ..data import with_transform
from ..data.loader import create_qpm_loader
from ..explain.grounding import ExplanationCollector
from ..metrics import class_independence, contrastiveness, feature_correlation, structural_grounding
from .args import resolve_args_precision
from .cli import UsageError
from .data import build_eval_dataset, class_names_of, eval_data_config, resolve_dataset
from .evaluate import Evaluation, evaluate, recovery_of
from .model import check_eval_args, check_eval_model, create_eval_model, read_checkpoint
from .sets import check_set_args, check_set_split, run_sets

__all__ = ['check_results_file', 'write_results', 'model_data_config', 'interpretability', 'validate']

_logger = logging.getLogger('validate')


def check_results_file(path: str) -> None:
    """Fail before any work when the results file cannot be written (its folder is missing or read-only)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f'--results-file {path} is a folder; give a file name.')
    if not os.path.isdir(folder):
        raise UsageError(f'cannot write --results-file {path}: folder {folder} does not exist.')
    try:
        fd, probe = tempfile.mkstemp(prefix='.validate.', dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UsageError(f'cannot write --results-file {path} ({e}); choose a writable location.') from e


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


def model_data_config(args, model) -> Dict[str, Any]:
    """The eval data config of a trained model, as timm's validate.py resolves it: the model's ``pretrained_cfg``;
    only the generic ``qpm`` architecture built by name carries none of its own (its backbone's ImageNet defaults)
    and gets the dataset's recipe config."""
    return eval_data_config(args, None if args.model == 'qpm' else model.pretrained_cfg)


def interpretability(model, train: Evaluation, evaluated: Evaluation, eval_set, sid_k: int) -> Dict[str, float]:
    """The QPM metrics (docs/METHOD.md, "Interpretability metrics"), each as :mod:`qpm_timm.metrics` computes it:
    SID@k and concept recovery on the evaluated split, the others on the training split with eval transforms."""
    head = model.head
    weights = model.class_weights.detach().float().cpu()
    metrics = OrderedDict()
    metrics[f'sid@{sid_k}'] = evaluated.sid
    metrics['class_independence'] = class_independence(train.pooled, train.labels.numpy(), model.num_classes)
    metrics['contrastiveness'] = contrastiveness(train.pooled)
    metrics['feature_correlation'] = feature_correlation(train.pooled, mean=head.mean.cpu(), std=head.std.cpu())
    attributes = getattr(eval_set, 'class_attributes', None)  # CUB with its attribute files
    if attributes is not None:
        c = weights.shape[0]
        metrics['structural_grounding'] = structural_grounding(weights, attributes, top=min(50, c * (c - 1)))
    recovery = recovery_of(model, evaluated, eval_set)
    if recovery is not None:
        metrics['concept_recovery'] = recovery.score
        _logger.info(recovery.format(getattr(eval_set, 'concept_names', None)))
    return metrics


def validate(args) -> Dict[str, Any]:
    """Validate ``--model`` and return the results (timm's fields, plus the QPM metrics); the results file is
    written only after every metric succeeded."""
    if args.results_file:
        check_results_file(args.results_file)
    check_eval_args(args)
    faithfulness, faithfulness_images = getattr(args, 'faithfulness', False), getattr(args, 'faithfulness_images', 256)
    if faithfulness and not args.interpretability:
        raise UsageError('--faithfulness is a QPM metric: drop --no-interpretability.')
    if faithfulness_images < 1:
        raise UsageError(f'--faithfulness-images must be >= 1, got {faithfulness_images}.')
    check_set_args(args)
    device = torch.device(args.device)
    precision, _ = resolve_args_precision(args, device)
    resolve_dataset(args)
    eval_set = build_eval_dataset(args, args.split)
    if args.prediction_sets:
        check_set_split(eval_set, args)
    num_classes = args.num_classes or len(class_names_of(eval_set))
    state_dict = read_checkpoint(args)
    if state_dict is None and not args.pretrained:
        _logger.warning(f'neither --pretrained nor --checkpoint: evaluating randomly initialised {args.model} weights')
    model = create_eval_model(args, num_classes, state_dict)
    check_eval_model(model, args, num_classes, need_qpm=args.interpretability or args.prediction_sets)
    model.to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    data_config = model_data_config(args, model)
    transform = create_transform(**data_config)
    eval_set = with_transform(eval_set, transform)
    param_count = sum(p.numel() for p in model.parameters())
    _logger.info(f'model {args.model} created, param count: {param_count}')

    sid_k = min(5, model.n_per_class) if args.interpretability else None
    run = dict(device=device, amp=args.amp, channels_last=args.channels_last, progress=not args.no_progress)
    loader = create_qpm_loader(eval_set, args.batch_size, num_workers=args.workers)
    explanations = ExplanationCollector(model, eval_set, faithfulness=faithfulness,
                                        max_images=faithfulness_images) if args.interpretability else None
    evaluated = evaluate(model, loader, sid_k=sid_k, keep_features=args.interpretability or args.prediction_sets,
                         desc=f'validation ({args.split})', observers=[explanations] if explanations else (), **run)
    _logger.info(f'evaluated {evaluated.count} images')
    results = OrderedDict(
        model=args.model,
        top1=round(evaluated.top1, 4), top1_err=round(100 - evaluated.top1, 4),
        top5=round(evaluated.top5, 4), top5_err=round(100 - evaluated.top5, 4),
        param_count=round(param_count / 1e6, 2),
        img_size=data_config['input_size'][-1], crop_pct=data_config['crop_pct'],
        interpolation=data_config['interpolation'], precision=precision.name)
    _logger.info(f' * Acc@1 {results["top1"]:.3f} ({results["top1_err"]:.3f}) '
                 f'Acc@5 {results["top5"]:.3f} ({results["top5_err"]:.3f})')

    if args.interpretability:
        train_set = with_transform(build_eval_dataset(args, args.train_split), transform)
        train_loader = create_qpm_loader(train_set, args.batch_size, num_workers=args.workers)
        train = evaluate(model, train_loader, keep_features=True, desc=f'training split ({args.train_split})', **run)
        metrics = interpretability(model, train, evaluated, eval_set, sid_k)
        metrics.update(explanations.result().summary())
        results.update(metrics)
        _logger.info(' * ' + ', '.join(f'{k} {100 * v:.2f} %' for k, v in metrics.items()))

    if args.prediction_sets:
        _, sets, table = run_sets(model, evaluated, eval_set, args)
        results.update(sets)
        _logger.info(table)

    if args.results_file:
        fmt = args.results_format or ('json' if args.results_file.lower().endswith('.json') else 'csv')
        write_results(args.results_file, results, fmt)
        _logger.info(f'results written to {args.results_file}')
    return results

"""``python -m qpm_timm.edit`` (docs/EDITING.md): its flags and run (:func:`edit_command`) over the library
:mod:`qpm_timm.edit`, and its optional fine-tune (``--finetune-epochs N``; docs/METHOD.md, "Editing"): stage 4 of the
run (:func:`~qpm_timm.run.training.finetune`) on the edited model, with the data and recipe of the run's ``args.yaml``.
"""
import argparse
import json
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import yaml

from ..data.loader import create_qpm_loader
from ..edit import (
    EDIT_EFFORT,
    EditResult,
    edit_model,
    export_edit,
    parse_edit,
    read_source,
    resolve_feature,
    result_labels,
)
from ..edit import __doc__ as edit_doc
from ..precision import resolve_precision
from ..solver import DEFAULT_TIME_LIMIT
from ..stats import QPMStatistics
from .cli import UsageError, exit_code
from .data import build_train_data, eval_data_config, resolve_dataset
from .experiment import ARGS, FEATURE_CACHE
from .training import feature_caches, finetune

__all__ = ['finetune_edited', 'edit_command', 'main']


def finetune_edited(model, run: Path, epochs: int, device: str = 'cpu') -> Dict[str, float]:
    """Fine-tune ``model`` (its binary head frozen) ``epochs`` epochs as the run in ``run`` fine-tuned; returns the
    last validation metrics (top1, top5) and the epochs."""
    args = argparse.Namespace(**yaml.safe_load((run / ARGS).read_text()))
    args.finetune_epochs, args.device, args.no_progress = epochs, device, True
    args.distributed, args.rank, args.world_size, args.resume = False, 0, 1, False
    args.amp = resolve_precision(args.amp, device, kept=True).amp  # the run's recorded precision
    resolve_dataset(args)
    data_config = eval_data_config(args)
    train_set, train_eval_set, val_set, _ = build_train_data(args, data_config)
    device = torch.device(device)
    model.to(device)
    reading = nullcontext()
    if args.feature_cache:  # the run's cache of the frozen backbone's maps (rebuilt only if it changed)
        train_set, _, val_set = feature_caches(args, model, train_set, train_eval_set, val_set, run / FEATURE_CACHE,
                                               device)
        reading = model.reading_backbone_maps()
    loaders = (create_qpm_loader(train_set, args.batch_size, True, args.workers),
               create_qpm_loader(val_set, args.validation_batch_size or args.batch_size, num_workers=args.workers))
    with reading, tempfile.TemporaryDirectory() as folder:
        metrics = finetune(model, loaders, args, device, Path(folder))
    model.eval()
    return dict(top1=float(metrics['top1']), top5=float(metrics['top5']), epochs=epochs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m qpm_timm.edit', description=edit_doc.split('\n\n')[0])
    p.add_argument('experiment', help='a train.py experiment folder, or an export written with --with-statistics')
    p.add_argument('--forbid-feature', nargs='+', action='extend', default=[], metavar='F',
                   help='no class may use feature F (index j, f<j>, ch<k> or its name)')
    p.add_argument('--forbid', nargs='+', action='extend', default=[], metavar='CLASS:FEATURE',
                   help='this class may not use this feature')
    p.add_argument('--require', nargs='+', action='extend', default=[], metavar='CLASS:FEATURE',
                   help='this class must use this feature')
    p.add_argument('--output', required=True, metavar='FOLDER', help='the edited export (a new folder)')
    p.add_argument('--with-statistics', action='store_true', help='copy statistics.npz into the export')
    p.add_argument('--finetune-epochs', type=int, default=0, metavar='N',
                   help='fine-tune the edited model N epochs with the run\'s recipe (needs the experiment folder)')
    p.add_argument('--effort', type=float, default=EDIT_EFFORT, help='solver effort (deterministic units)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--resolve-all', action='store_true',
                   help='re-solve every class (default: the classes the edit does not touch keep their features)')
    p.add_argument('--time-limit', type=float, default=DEFAULT_TIME_LIMIT, help='wall-clock cap of the re-solve (s)')
    p.add_argument('--device', default='cpu', help='device of the fine-tune')
    return p


def edit_command(argv: Optional[Sequence[str]] = None) -> EditResult:
    """``python -m qpm_timm.edit``: refuses bad input before writing anything (:class:`~qpm_timm.run.cli.UsageError`,
    :class:`EditImpossible`)."""
    args = _parser().parse_args(argv)
    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UsageError(f'--output {output} already exists; choose a new folder (an edit never overwrites).')
    if not (math.isfinite(args.effort) and args.effort > 0):
        raise UsageError(f'--effort must be a positive number, got {args.effort}.')
    if args.finetune_epochs < 0:
        raise UsageError(f'--finetune-epochs must be >= 0, got {args.finetune_epochs}.')
    source = read_source(args.experiment)
    if args.finetune_epochs and source.run is None:
        raise UsageError('--finetune-epochs needs the experiment folder (its args.yaml names the data and recipe).')
    model = source.model
    config = json.loads((source.export / 'config.json').read_text())
    class_names = config.get('label_names') or [f'class {c}' for c in range(model.num_classes)]
    selection = model.head.selection.tolist()
    edit = parse_edit(args.forbid_feature, args.forbid, args.require, class_names,
                      lambda spec: resolve_feature(spec, selection, source.labels, source.annotations,
                                                   model.num_features))
    if edit.empty:
        raise UsageError('nothing to edit: give --forbid-feature, --forbid or --require.')
    if not source.earlier.empty:
        print(f'keeping the constraints of the edit that made {source.export}: '
              + '; '.join(source.earlier.describe(class_names)))
        edit = source.earlier + edit
    statistics = QPMStatistics.load(source.statistics)
    started = time.perf_counter()
    result = edit_model(model, statistics, edit, effort=args.effort, seed=args.seed, locality=source.locality,
                        time_limit=args.time_limit, keep_others=not args.resolve_all)
    solve_seconds = time.perf_counter() - started
    extra: Dict[str, Any] = dict(seed=args.seed, effort=args.effort, solve_seconds=round(solve_seconds, 2),
                                 keep_others=not args.resolve_all)
    if args.finetune_epochs:
        extra['finetune'] = finetune_edited(result.model, source.run, args.finetune_epochs, args.device)
    size = export_edit(result, source, output, class_names, args.with_statistics, extra)
    labels, _ = result_labels(result, source)
    print(result.table(class_names, labels))
    print(f'\nZ before the edit {result.before_objective:.4f}; re-solve: {result.solution.summary()} '
          f'(solve {solve_seconds:.1f} s)')
    if 'finetune' in extra:
        print(f'fine-tuned {args.finetune_epochs} epochs: validation top-1 {extra["finetune"]["top1"]:.2f} %')
    if size is not None:
        print(f'statistics.npz ({size / 1e6:.2f} MB) carried in the export')
    print(f'edited model exported to {output}')
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    return exit_code(edit_command, argv)

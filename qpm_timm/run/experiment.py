"""The experiment folder of a training run, ``<output>/<experiment>/``: its layout, and resume after a kill.

    args.yaml        the run's arguments (a resume reads them back)
    feature_cache/   with --feature-cache: the frozen backbone's maps (docs/FEATURE_CACHE.md)
    dense/           dense training (last.pth.tar, summary.csv)
    statistics.npz   the statistics pass over the un-augmented training set (A, B, mean, std)
    gallery.npz      the feature gallery collected on the statistics pass
    solution.json    the class -> feature assignment (CP-SAT)
    finetune/        fine-tuning with the binary head frozen (last.pth.tar, summary.csv)
    export/          model.safetensors + config.json + model card (timm's ``local-dir:``)
    report/          the explanation report (index.html), also embedded in export/
    results.json     final accuracy, solver summary, concept recovery, wall time

Every stage leaves its result before the next starts, so a killed run continues after its last finished epoch or
stage (``--resume``) and ends with the assignment of an uninterrupted run.
"""
from pathlib import Path

import yaml

from .cli import UsageError

__all__ = ['ARGS', 'FEATURE_CACHE', 'DENSE', 'STATISTICS', 'GALLERY', 'SOLUTION', 'FINETUNE', 'EXPORT', 'REPORT',
           'RESULTS', 'experiment_folder', 'restore_args', 'start_experiment', 'resume_epoch']

ARGS, FEATURE_CACHE, DENSE, STATISTICS, GALLERY = 'args.yaml', 'feature_cache', 'dense', 'statistics.npz', 'gallery.npz'
SOLUTION, FINETUNE, EXPORT, REPORT, RESULTS = 'solution.json', 'finetune', 'export', 'report', 'results.json'

# how to run it, not what to run: a resume takes these from its own command line
_RUN_ONLY = ('resume', 'device', 'workers', 'no_progress', 'solver_log', 'rank', 'world_size', 'local_rank',
             'distributed')


def experiment_folder(args) -> Path:
    """The experiment folder (not created yet); refuses to overwrite an earlier run unless ``--resume``."""
    backbone = str(args.backbone).split('.')[0]
    name = args.experiment or f'{args.model if args.model != "qpm" else "qpm_" + backbone}-{args.dataset}'
    exp = Path(args.resume) if isinstance(args.resume, str) else Path(args.output) / name
    if exp.is_dir() and any(exp.iterdir()) and not args.resume:
        raise UsageError(f'{exp} already holds a run; pass --resume to continue it or choose --experiment.')
    if args.resume and not (exp / ARGS).is_file():
        raise UsageError(f'nothing to resume in {exp} (no {ARGS}).')
    return exp


def restore_args(args, exp: Path) -> None:
    """``--resume``: the experiment's own arguments, except how to run it (device, workers, progress, ranks)."""
    saved = yaml.safe_load((exp / ARGS).read_text())
    args.__dict__.update({k: v for k, v in saved.items() if k not in _RUN_ONLY and k in args.__dict__})


def start_experiment(exp: Path, args, args_text: str) -> None:
    """Create the experiment folder and record the arguments (rank 0), once every input has been checked."""
    if args.rank != 0:
        return
    try:
        exp.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            (exp / ARGS).write_text(args_text)
    except OSError as e:
        raise UsageError(f'cannot write to the output folder {exp} ({e}); choose a writable --output.') from e


def resume_epoch(model, optimizer, folder: Path) -> int:
    """Epoch to start a stage from: after its last checkpointed one (``folder/last.pth.tar``), or 0."""
    last = folder / 'last.pth.tar'
    if not last.is_file():
        return 0
    from timm.models import resume_checkpoint
    epoch = resume_checkpoint(model, str(last), optimizer, log_info=False, weights_only=False)
    return 0 if epoch is None else epoch

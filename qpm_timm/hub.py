""" Hugging Face Hub format: ``model.safetensors`` + timm ``config.json`` + a model card, and the push.

A folder written by :func:`save_pretrained` loads back with ``timm.create_model('local-dir:<folder>',
pretrained=True)``, with ``pretrained_cfg_overlay=dict(file=<folder>/model.safetensors)`` and with
``checkpoint_path=``. Its model card is rendered from the config.json written beside it, so every field the card
states (input size, mean, std, crop, interpolation, head sizes) is the one timm loads.

    python -m qpm_timm.hub push <experiment-or-export-folder> --repo-id ORG/NAME [--private] [--revision REV]
        [--results validate.json] [--dry-run]
    python -m qpm_timm.hub write-configs hub_configs

``push`` (:func:`push_to_hub`) uploads, in one commit, the export's weights and config.json (and the prediction sets'
calibration, ``prediction_sets.json``, when the export has one: :func:`qpm_timm.conformal.load_calibration`), a
model card naming the repository and the run's results (``results.json`` of train.py, a validate.py JSON), and the
run's ``args.yaml`` / ``results.json``; ``write-configs`` regenerates ``hub_configs/<variant>/`` (config.json +
model card) of every registered variant, from the variant table (:mod:`qpm_timm.models.variants`, which also writes
the README's Models table: ``python -m qpm_timm.models write-models-table README.md``).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models._hub import save_config_for_hf

from .atomic import atomic_folder
from .models.assignment import model_feature_table, weights_per_class
from .models.load_errors import unreadable_checkpoint_message
from .models.qpm import LOAD_TIME_ARGS, QPMModel
from .models.sparse_head import SPARSE_HEADS
from .models.variants import DATASET_NAMES, VARIANT_ARGS, variant_dataset

__all__ = ['save_pretrained', 'read_weights', 'model_card', 'write_hub_configs', 'push_to_hub',
           'PushPlan', 'RunResults', 'exported_file']

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
CALIBRATION_NAME = 'prediction_sets.json'  # the calibration of the prediction sets (qpm_timm.conformal)
RUN_FILES = ('args.yaml', 'results.json')  # what train.py leaves beside export/, uploaded with it
VALIDATE_RESULTS_NAME = 'validate_results.json'
_CARD_TEMPLATE = Path(__file__).parent / 'templates' / 'model_card.md.j2'  # the card's text (Jinja2)
# config.json fields a model card states: the architecture, the head sizes, the evaluation transform, provenance
_CARD_PRETRAINED_FIELDS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std', 'license',
                           'origin_url', 'notes')


def read_weights(path: str) -> Dict[str, torch.Tensor]:
    """Read a ``.safetensors`` (or timm/torch) checkpoint; a missing, truncated or corrupted file names itself."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'weights file {path} does not exist.')
    if path.endswith('.safetensors'):
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f'{path} is not a readable safetensors file (truncated or corrupted: {e}); '
                             f'delete it (and its Hugging Face cache entry) and export or download it again.') from e
    try:
        return timm.models.load_state_dict(path)  # torch.load(weights_only=True)
    except Exception as e:  # torch.load raises many types for a damaged file
        raise ValueError(unreadable_checkpoint_message(path, e)) from e


def _model_args(model: QPMModel) -> Dict:
    """Arguments that rebuild the head (recorded in config.json's ``model_args``)."""
    args = dict(head=model.head_kind, n_features=model.n_features,
                n_per_class=model.n_per_class, num_classes=model.num_classes)
    if model.relu_after_norm:
        args['relu_after_norm'] = True
    return args


# --- model card ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunResults:
    """Metrics of a run for the model card: which file they come from, on which dataset and split."""
    source: str
    metrics: Dict[str, float]
    dataset: Optional[str] = None
    split: Optional[str] = None


def _card_fields(config: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """``(dotted config.json path, value)`` of every field the card states."""
    fields = [('architecture', config['architecture']), ('num_classes', config['num_classes'])]
    fields += [(f'model_args.{k}', v) for k, v in config.get('model_args', {}).items()]
    cfg = config['pretrained_cfg']
    fields += [(f'pretrained_cfg.{k}', cfg[k]) for k in _CARD_PRETRAINED_FIELDS if k in cfg]
    return fields


# Hub model-index entries of a result: the QPM's accuracy, and the dense model's it came from (train.py's results)
_INDEX_ENTRIES = (
    (('top1', 'Top-1 accuracy'), ('top5', 'Top-5 accuracy')),
    (('dense_top1', 'Top-1 accuracy of the dense model before the QPM (last epoch)'),
     ('dense_best_top1', 'Top-1 accuracy of the dense model before the QPM (best epoch)')),
)


def _eval_results(results: Sequence[RunResults]) -> List[EvalResult]:
    """The Hub's ``model-index`` as huggingface_hub's :class:`~huggingface_hub.EvalResult` rows: the accuracy of every
    result whose dataset is known, and the dense model's it came from (train.py's ``dense_*``), each metric named
    (huggingface_hub groups the rows of one dataset and split into one entry)."""
    rows = []
    for r in results:
        if not r.dataset:
            continue
        for keys in _INDEX_ENTRIES:
            rows += [EvalResult(task_type='image-classification', task_name='Image Classification',
                                dataset_type=r.dataset,
                                dataset_name=DATASET_NAMES.get(r.dataset, r.dataset), dataset_split=r.split,
                                metric_type='accuracy', metric_value=r.metrics[k], metric_name=label)
                     for k, label in keys if k in r.metrics]
    return rows


def _drop_load_time_args(config_path: Path) -> None:
    """Remove from config.json's ``model_args`` what only says how the weights were first loaded
    (``pretrained_backbone``: a reload takes the exported weights, never the backbone's)."""
    config = json.loads(config_path.read_text())
    args = config.get('model_args', {})
    if any(k in args for k in LOAD_TIME_ARGS):
        config['model_args'] = {k: v for k, v in args.items() if k not in LOAD_TIME_ARGS}
        config_path.write_text(json.dumps(config, indent=2) + '\n')


def model_card(
        model: QPMModel,
        config: Dict[str, Any],
        repo_id: Optional[str] = None,
        local_dir: Optional[str] = None,
        results: Sequence[RunResults] = (),
        trained: bool = True,
        feature_names: Optional[Sequence[str]] = None,
        report: Optional[str] = None,
        sections: Sequence[str] = (),
) -> str:
    """Model card (README.md) of ``model`` rendered from its ``config`` (config.json) with huggingface_hub's
    ``ModelCard.from_template`` and this package's template (``templates/model_card.md.j2``): usage with the
    repository id (or ``local-dir:`` when none is known), the config's fields, the run's results (also as Hub
    ``model-index``), the precision it was trained in and, for trained weights, every class's features;
    ``sections``: more markdown sections (e.g. an edit's record) before the class table."""
    cfg, args = config['pretrained_cfg'], config.get('model_args', {})
    name = repo_id.split('/')[-1] if repo_id else config['architecture']
    evals = _eval_results(results)
    front = ModelCardData(tags=['image-classification', 'timm', 'qpm', 'interpretable'], library_name='timm',
                          license=cfg.get('license', 'apache-2.0'), model_name=name if evals else None,
                          eval_results=evals or None)
    where = f'hf-hub:{repo_id}' if repo_id else f'local-dir:{local_dir or "<folder>"}'
    rows = [dict(metrics=r.metrics, where_from=r.source + (f', {r.dataset}' if r.dataset else '')
                 + (f' {r.split} split' if r.split else ''),
                 dense_line=(f'Validation top-1: {r.metrics["top1"]:.2f} % for the QPM, {r.metrics["dense_top1"]:.2f} '
                             f'% for the dense model it was made from (last dense epoch; best '
                             f'{r.metrics["dense_best_top1"]:.2f} %).')
                 if {'top1', 'dense_top1', 'dense_best_top1'} <= set(r.metrics) else None) for r in results]
    trained = trained and model.is_qpm and model.num_classes
    names = config.get('label_names') or [f'class {c}' for c in range(model.num_classes)]
    card = ModelCard.from_template(
        front, template_str=_CARD_TEMPLATE.read_text(encoding='utf-8'), name=name, paper=cfg.get('paper_ids'),
        num_classes=config['num_classes'], n_features=args.get('n_features'), n_per_class=args.get('n_per_class'),
        relu=bool(args.get('relu_after_norm')), where=where,
        baseline=SPARSE_HEADS[model.head_kind].description if model.head_kind in SPARSE_HEADS else None,
        per_class=weights_per_class(model.class_weights.detach().cpu()) if trained and not model.head_kind == 'qpm'
        else None,
        fields=[(k, json.dumps(v)) for k, v in _card_fields(config)], results=rows,
        precision=config.get('training', {}).get('precision'),  # train.py records the precision it resolved
        sections=[section.rstrip() for section in sections],
        table=model_feature_table(model, names, names=feature_names) if trained else None,
        source='adapter output channel' if model.adapter_depth else 'backbone channel',
        named=feature_names is not None, report=report)
    return str(card)


def _read_json(path: Path) -> Dict[str, Any]:
    return json.loads(Path(path).read_text())


def save_pretrained(
        model: QPMModel,
        folder: str,
        label_names: Optional[Sequence[str]] = None,
        data_config: Optional[Dict] = None,
        repo_id: Optional[str] = None,
        results: Sequence[RunResults] = (),
        feature_names: Optional[Sequence[str]] = None,
        report_dir: Optional[str] = None,
        card_sections: Sequence[str] = (),
        extra_files: Optional[Dict[str, Union[str, os.PathLike]]] = None,
        training: Optional[Dict[str, Any]] = None,
        calibration_json: Optional[str] = None,
) -> Path:
    """Export ``model`` as a Hub repository folder: ``model.safetensors``, ``config.json``, ``README.md`` (rendered
    from that config.json, with ``repo_id`` in its usage line when given, else ``local-dir:<folder>``); with
    ``report_dir`` (:func:`qpm_timm.explain.write_report`) a copy of the report in ``report/``, which the model
    card embeds, its features named by ``feature_names``; ``card_sections``: more markdown sections of the card;
    ``extra_files``: ``{name: source file}`` copied into the folder (e.g. an edit's ``statistics.npz``);
    ``training``: how it was trained, kept as config.json's ``training`` (train.py: CHiQPM's settings); with
    ``calibration_json`` (the document of :func:`qpm_timm.conformal.calibrate`'s calibration, its ``to_json()``)
    ``prediction_sets.json``, which :func:`qpm_timm.conformal.load_calibration` finds beside the loaded weights."""
    if not isinstance(model, QPMModel):
        raise TypeError(f'save_pretrained exports QPMModel instances, got {type(model).__name__}.')
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f'{len(label_names)} label names for {model.num_classes} classes.')
    label_names = list(label_names) if label_names is not None else model.pretrained_cfg.get('label_names')

    def write(tmp: Path) -> None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={'format': 'pt'})
        config = dict(label_names=label_names) if label_names else {}
        if training:
            config['training'] = training
        save_config_for_hf(model, tmp / CONFIG_NAME, model_config=config, model_args=_model_args(model),
                           data_config=data_config)
        _drop_load_time_args(tmp / CONFIG_NAME)
        if report_dir is not None:
            shutil.copytree(report_dir, tmp / 'report')
        for name, source in (extra_files or {}).items():
            shutil.copy2(source, tmp / name)
        if calibration_json is not None:
            (tmp / CALIBRATION_NAME).write_text(calibration_json)
        card = model_card(model, _read_json(tmp / CONFIG_NAME), repo_id, str(folder), results,
                          feature_names=feature_names, report='report' if report_dir is not None else None,
                          sections=card_sections)
        (tmp / CARD_NAME).write_text(card, encoding='utf-8')

    atomic_folder(folder, write, keep_files=True)
    return Path(folder)


def exported_file(model: QPMModel, name: str) -> Optional[Path]:
    """The file ``name`` exported beside ``model``'s weights (for a model from ``local-dir:``,
    ``pretrained_cfg_overlay=dict(file=...)`` or ``hf-hub:``), or None when its export has none (e.g.
    ``prediction_sets.json``: :func:`qpm_timm.conformal.load_calibration`)."""
    cfg = model.pretrained_cfg or {}
    path = None
    if cfg.get('file'):
        where = Path(cfg['file'])
        path = (where if where.is_dir() else where.parent) / name
    elif cfg.get('hf_hub_id') and cfg.get('source') == 'hf-hub':
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
        try:
            path = Path(hf_hub_download(cfg['hf_hub_id'], name))
        except (EntryNotFoundError, LocalEntryNotFoundError):  # none in the repository, or offline without a copy
            return None
    return path if path is not None and path.is_file() else None


def write_hub_configs(out_dir: str) -> None:
    """``hub_configs/<variant>/{config.json, README.md}`` for every registered variant (the variant table)."""
    for variant in VARIANT_ARGS:
        model = timm.create_model(variant, device='meta')

        def write(tmp: Path, model=model) -> None:
            save_config_for_hf(model, tmp / CONFIG_NAME, model_args=_model_args(model))
            config = _read_json(tmp / CONFIG_NAME)
            repo_id = model.pretrained_cfg['hf_hub_id']
            config['pretrained_cfg']['hf_hub_id'] = repo_id
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + '\n')
            (tmp / CARD_NAME).write_text(model_card(model, config, repo_id=repo_id, trained=False))

        atomic_folder(Path(out_dir) / variant, write, keep_files=True)


# --- push ---------------------------------------------------------------------------------------------------------
@dataclass
class PushPlan:
    """What :func:`push_to_hub` uploads (or, for a dry run, would upload) and where; ``commit_url`` once pushed."""
    repo_id: str
    revision: str
    private: bool
    endpoint: str
    files: Dict[str, int] = field(default_factory=dict)  # path in the repository -> size in bytes
    card: str = ''  # the README.md it uploads
    commit_url: Optional[str] = None

    def describe(self) -> str:
        target = f'{self.endpoint}/{self.repo_id} (revision {self.revision}, {"private" if self.private else "public"})'
        head = f'pushed to {target}: {self.commit_url}' if self.commit_url else f'dry run, would push to {target}:'
        return '\n'.join([head] + [f'  {name}  {size} bytes' for name, size in self.files.items()])


def _check_repo_id(repo_id: str) -> None:
    """huggingface_hub's own rule for a repository id, and a namespace (ORG/NAME): the Hub's error, named."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    refused = f'--repo-id must be ORG/NAME (letters, digits, "-", "_", "."), got {repo_id!r}'
    try:
        validate_repo_id(repo_id)  # also refuses what is not a string
    except HFValidationError as e:
        raise ValueError(f'{refused}: {e}') from e
    if repo_id.count('/') != 1:
        raise ValueError(f'{refused}.')


def _find_export(folder: Path) -> Tuple[Path, Path]:
    """(export folder, folder of the run's args.yaml / results.json) of an export or a train.py experiment folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder} does not exist or is not a folder.')
    if (folder / 'export').is_dir():
        return folder / 'export', folder
    if (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file():
        run = folder.parent if folder.name == 'export' else folder
        return folder, run
    raise ValueError(f'{folder} is neither an export ({WEIGHTS_NAME} + {CONFIG_NAME}) nor a train.py experiment '
                     f'folder (with export/): finish the run with train.py --resume, or export the model with '
                     f'qpm_timm.hub.save_pretrained.')


def _run_results(run: Path, validate_results: Optional[str], architecture: str) -> List[RunResults]:
    """The run's ``results.json`` (train.py) and a validate.py JSON results file, with the run's dataset (from its
    args.yaml, else the one a registered variant is named after) and, for train.py's, its validation split."""
    args = (yaml.safe_load((run / 'args.yaml').read_text()) if (run / 'args.yaml').is_file() else None) or {}
    dataset = args.get('dataset') or (variant_dataset(architecture) if architecture in VARIANT_ARGS else None)
    split = args.get('val_split')
    found = []
    for path, source in ((run / 'results.json', 'results.json (train.py)'),
                         (validate_results, 'validate.py')):
        if path and Path(path).is_file():
            metrics = {k: v for k, v in _read_json(path).items() if isinstance(v, (int, float))
                       and not isinstance(v, bool)}
            found.append(RunResults(source, metrics, dataset, split if source.startswith('results') else None))
    return found


def _stage(
        source: Union[QPMModel, str, os.PathLike],
        repo_id: str,
        staging: Path,
        validate_results: Optional[str],
) -> None:
    """Fill ``staging`` with what one commit uploads: weights, config.json, the card for ``repo_id``, run files."""
    if isinstance(source, QPMModel):
        source = save_pretrained(source, staging.parent / 'export')
    export, run = _find_export(Path(source))
    if validate_results and not Path(validate_results).is_file():
        raise FileNotFoundError(f'--results {validate_results} does not exist.')
    model = timm.create_model(f'local-dir:{export}', pretrained=True)  # refuses an export that does not load
    staging.mkdir(parents=True)
    for name in (WEIGHTS_NAME, CONFIG_NAME) + ((CALIBRATION_NAME,) if (export / CALIBRATION_NAME).is_file() else ()):
        shutil.copy2(export / name, staging / name)
    for name in RUN_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, staging / name)
    if validate_results:
        shutil.copy2(validate_results, staging / VALIDATE_RESULTS_NAME)
    config = _read_json(export / CONFIG_NAME)
    results = _run_results(run, validate_results, config['architecture'])
    card = model_card(model, config, repo_id, results=results)
    (staging / CARD_NAME).write_text(card)


def push_to_hub(
        source: Union[QPMModel, str, os.PathLike],
        repo_id: str,
        private: bool = False,
        revision: Optional[str] = None,
        dry_run: bool = False,
        validate_results: Optional[str] = None,
        commit_message: Optional[str] = None,
) -> PushPlan:
    """Upload a QPM to the Hub repository ``repo_id`` in one commit (module docstring).

    Args:
        source: a :class:`QPMModel` (exported first), an export folder or a train.py experiment folder.
        repo_id: ``ORG/NAME``; created (``private`` or public) when missing.
        revision: branch to commit to (created from ``main`` when missing); default ``main``.
        dry_run: only stage the files and return the plan; no request is made.
        validate_results: a validate.py JSON results file, shown on the card and uploaded.
    """
    from huggingface_hub import HfApi, constants
    _check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix='qpm-push-') as tmp:
        staging = Path(tmp) / 'repo'
        _stage(source, repo_id, staging, validate_results)
        plan = PushPlan(repo_id, revision or 'main', private, constants.ENDPOINT,
                        {f.name: f.stat().st_size for f in sorted(staging.iterdir())},
                        (staging / CARD_NAME).read_text())
        if dry_run:
            return plan
        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        if plan.revision != 'main':
            api.create_branch(repo_id, branch=plan.revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=staging, revision=plan.revision,
                                 commit_message=commit_message or f'Upload {repo_id.split("/")[-1]} (qpm-timm)')
        plan.commit_url = info.commit_url
    return plan


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     epilog='Exit code 2 on bad input, 1 when the Hub refuses the push.')
    commands = parser.add_subparsers(dest='command')
    push = commands.add_parser('push', help='upload an export or a train.py experiment folder to the Hub')
    push.add_argument('folder', help='export folder (model.safetensors + config.json) or experiment folder')
    push.add_argument('--repo-id', required=True, metavar='ORG/NAME')
    push.add_argument('--private', action='store_true', default=False, help='create the repository private')
    push.add_argument('--revision', default=None, metavar='BRANCH', help='default: main')
    push.add_argument('--results', default=None, metavar='FILE', help='a validate.py JSON results file for the card')
    push.add_argument('--dry-run', action='store_true', default=False, help='list files and target, no network')
    configs = commands.add_parser('write-configs', help='config.json + model card of every registered variant')
    configs.add_argument('dir', metavar='DIR')
    args = parser.parse_args(argv)
    if args.command == 'write-configs':
        write_hub_configs(args.dir)
        return 0
    if args.command != 'push':
        parser.error('give a command: push or write-configs')
    from huggingface_hub.errors import HfHubHTTPError
    try:
        plan = push_to_hub(args.folder, args.repo_id, args.private, args.revision, args.dry_run, args.results)
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except HfHubHTTPError as e:
        print(f'error: the Hub refused the push to {args.repo_id}: {e}', file=sys.stderr)
        return 1
    print(plan.describe())
    return 0


if __name__ == '__main__':
    sys.exit(main())

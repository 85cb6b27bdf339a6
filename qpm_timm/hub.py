""" Hugging Face Hub format: ``model.safetensors`` + timm ``config.json`` + a model card.

A folder written by :func:`save_pretrained` loads back with ``timm.create_model('local-dir:<folder>',
pretrained=True)``, with ``pretrained_cfg_overlay=dict(file=<folder>/model.safetensors)`` and with
``checkpoint_path=``, and can be pushed to the Hub as it is (``huggingface_hub.upload_folder``).

``python -m qpm_timm.hub --write-configs hub_configs`` regenerates ``hub_configs/<variant>/`` (config.json +
model card) for every registered variant from the ``default_cfgs`` table of :mod:`qpm_timm.models.qpm`.
"""
import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import timm
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models._hub import save_config_for_hf

from .atomic import atomic_folder
from .explain import model_feature_table
from .models.qpm import VARIANT_ARGS, QPMModel

__all__ = ['save_pretrained', 'read_weights', 'model_card', 'write_hub_configs']

WEIGHTS_NAME = 'model.safetensors'


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
        return timm.models.load_state_dict(path)
    except Exception as e:  # torch.load raises many types for a damaged file
        raise ValueError(f'{path} is not a readable checkpoint ({type(e).__name__}: {e}).') from e


def _model_args(model: QPMModel) -> Dict:
    """Arguments that rebuild the head shapes (recorded in config.json's ``model_args``)."""
    return dict(head='qpm' if model.is_qpm else 'dense', n_features=model.n_features,
                n_per_class=model.n_per_class, num_classes=model.num_classes)


def model_card(
        model: QPMModel,
        label_names: Optional[Sequence[str]] = None,
        repo_id: Optional[str] = None,
        trained: bool = True,
        feature_names: Optional[Sequence[str]] = None,
        report: Optional[str] = None,
) -> str:
    """Model card (README.md): architecture, usage and, for trained weights, every class's features (named by
    ``feature_names``, e.g. from :func:`qpm_timm.explain.name_features`) and the explanation ``report`` folder
    (relative path) with its global picture."""
    cfg = model.pretrained_cfg
    arch = cfg.get('architecture', 'qpm')
    repo_id = repo_id or cfg.get('hf_hub_id') or f'<org>/{arch}'
    load = f"timm.create_model('hf-hub:{repo_id}', pretrained=True)"
    lines = [
        '---', 'tags:', '- image-classification', '- timm', '- qpm', '- interpretable', 'library_name: timm',
        f"license: {cfg.get('license', 'apache-2.0')}", '---', '',
        f'# {arch}', '',
        f'A QPM (Norrenbrock et al., ICLR 2025, {cfg.get("paper_ids", "arXiv:2502.20130")}) on a '
        f'`{model.backbone_name}` backbone: a globally interpretable classifier whose final layer is a binary '
        f'class x feature assignment. {model.num_classes} classes share {model.n_features} features; every '
        f'class uses exactly {model.n_per_class} of them, and no two classes use the same set.', '',
        '## Usage', '', '```python', 'import timm, qpm_timm', f'model = {load}.eval()',
        'out = model.forward_with_features(images)  # logits, feature maps, pooled features',
        'print(qpm_timm.explain.class_feature_table(model.class_weights))', '```', '',
        f"Input: {tuple(cfg.get('input_size', (3, 224, 224)))}, mean {tuple(cfg.get('mean', ()))}, "
        f"std {tuple(cfg.get('std', ()))}, crop_pct {cfg.get('crop_pct')}.", '',
    ]
    if trained and model.is_qpm and model.num_classes:
        names = list(label_names) if label_names is not None else [f'class {c}' for c in range(model.num_classes)]
        lines += ['## Classes and their features', '',
                  'Feature `f<j> (ch <c>)` is backbone channel `c`, the j-th kept feature.' + (
                      '' if feature_names is None else ' `f<j> ≈ <annotation> (r = ...)`: the annotation the '
                                                       'feature\'s activation correlates with best.'), '']
        if report:
            lines += [f'![class x feature assignment]({report}/global.png)', '',
                      f'Every feature\'s gallery, every class card and contrastive pairs: [{report}/index.html]'
                      f'({report}/index.html).', '']
        lines += [model_feature_table(model, names, names=feature_names), '']
    else:
        lines += ['## Classes and their features', '',
                  'This card describes the architecture; the class -> feature table is written by '
                  '`qpm_timm.hub.save_pretrained` when trained weights are exported.', '']
    return '\n'.join(lines)


def save_pretrained(
        model: QPMModel,
        folder: str,
        label_names: Optional[Sequence[str]] = None,
        data_config: Optional[Dict] = None,
        feature_names: Optional[Sequence[str]] = None,
        report_dir: Optional[str] = None,
) -> Path:
    """Export ``model`` as a Hub repository folder: ``model.safetensors``, ``config.json``, ``README.md``; with
    ``report_dir`` (:func:`qpm_timm.explain.write_report`) a copy of the report in ``report/``, which the model
    card embeds, its features named by ``feature_names``."""
    if not isinstance(model, QPMModel):
        raise TypeError(f'save_pretrained exports QPMModel instances, got {type(model).__name__}.')
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f'{len(label_names)} label names for {model.num_classes} classes.')
    label_names = list(label_names) if label_names is not None else model.pretrained_cfg.get('label_names')

    def write(tmp: Path) -> None:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={'format': 'pt'})
        config = dict(label_names=label_names) if label_names else {}
        save_config_for_hf(model, tmp / 'config.json', model_config=config, model_args=_model_args(model),
                           data_config=data_config)
        if report_dir is not None:
            shutil.copytree(report_dir, tmp / 'report')
        (tmp / 'README.md').write_text(model_card(model, label_names, feature_names=feature_names,
                                                  report='report' if report_dir is not None else None),
                                       encoding='utf-8')

    atomic_folder(folder, write, keep_files=True)
    return Path(folder)


def write_hub_configs(out_dir: str) -> None:
    """``hub_configs/<variant>/{config.json, README.md}`` for every registered variant (default_cfgs table)."""
    for variant in VARIANT_ARGS:
        model = timm.create_model(variant, device='meta')

        def write(tmp: Path, model=model) -> None:
            save_config_for_hf(model, tmp / 'config.json', model_args=_model_args(model))
            config = json.loads((tmp / 'config.json').read_text())
            config['pretrained_cfg']['hf_hub_id'] = model.pretrained_cfg['hf_hub_id']
            (tmp / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
            (tmp / 'README.md').write_text(model_card(model, trained=False))

        atomic_folder(Path(out_dir) / variant, write, keep_files=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--write-configs', metavar='DIR', required=True,
                        help='write config.json + model card of every registered variant under DIR')
    args = parser.parse_args(argv)
    write_hub_configs(args.write_configs)


if __name__ == '__main__':
    main()

"""One data config from training to export to validation: the eval transform is timm's for the config the
export records, so timm's ``resolve_data_config(model=...)`` + ``create_transform`` and our validate.py see the
same tensors."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_dataset, create_loader, create_transform, resolve_data_config

import qpm_timm
from helpers.folder_tree import make_folder_tree
from helpers.scripts import read_results, run_script
from qpm_timm import hub
from qpm_timm.data import create_qpm_transform, qpm_data_config


def _export(folder, data_config, num_classes=4):
    torch.manual_seed(0)
    model = qpm_timm.create_qpm('test_resnet', num_classes, n_features=6, n_per_class=2, head='dense')
    torch.nn.init.normal_(model.head.fc.weight)  # predictions that differ from image to image
    hub.save_pretrained(model.eval(), folder, data_config=data_config)
    return timm.create_model(f'local-dir:{folder}', pretrained=True).eval()


@pytest.mark.parametrize('name, crop_to_bbox, expected', [
    ('concepts', True, dict(input_size=(3, 64, 64), crop_pct=1.0, crop_mode='center', mean=(0.5,) * 3)),
    ('cub', True, dict(input_size=(3, 224, 224), crop_pct=1.0, crop_mode='squash')),
    ('cub', False, dict(input_size=(3, 224, 224), crop_pct=1.0, crop_mode='center')),
    ('cars', True, dict(input_size=(3, 224, 224), crop_pct=1.0, crop_mode='center')),
    ('imagenet', True, dict(input_size=(3, 224, 224), crop_pct=0.875, crop_mode='center')),
])
def test_the_exported_config_rebuilds_our_eval_transform_with_timm(tmp_path, name, crop_to_bbox, expected):
    model = _export(tmp_path / 'export', qpm_data_config(name, crop_to_bbox=crop_to_bbox))
    resolved = resolve_data_config({}, model=model)
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in resolved.items() if k in expected} == expected
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 260, 3), dtype=np.uint8))
    ours = create_qpm_transform(name, is_training=False, crop_to_bbox=crop_to_bbox)(image)
    assert torch.equal(ours, create_transform(**resolved)(image))


def test_our_validate_and_timms_pipeline_agree_on_an_export_at_its_own_input_size(tmp_path):
    make_folder_tree(tmp_path / 'tree', classes=4, per_class=3)
    config = dict(qpm_data_config('folder', img_size=48), crop_pct=0.9, interpolation='bicubic')
    model = _export(tmp_path / 'export', config)
    assert run_script('validate.py', ['--model', f'local-dir:{tmp_path / "export"}', '--pretrained', '--data-dir',
                                      tmp_path / 'tree', '--split', 'val', '--no-interpretability', '--workers', '0',
                                      '--results-file', tmp_path / 'results.json']) == 0
    results = read_results(tmp_path / 'results.json')
    assert (results['img_size'], results['crop_pct'], results['interpolation']) == (48, 0.9, 'bicubic')

    # timm's validate.py: resolve_data_config(model=...) -> create_loader over the same folder
    cfg = resolve_data_config({}, model=model)
    dataset = create_dataset('', root=str(tmp_path / 'tree'), split='val')
    loader = create_loader(dataset, cfg['input_size'], batch_size=5, use_prefetcher=False, interpolation=cfg[
        'interpolation'], mean=cfg['mean'], std=cfg['std'], crop_pct=cfg['crop_pct'], crop_mode=cfg['crop_mode'])
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    assert results['top1'] == pytest.approx(100 * correct / total, abs=1e-3)

"""Hub format: export, the three timm loading paths, bad files, generated hub_configs."""
import filecmp
import json
import re

import pytest
import timm
import torch

import qpm_timm
from qpm_timm import hub
from qpm_timm.models.head import placeholder_assignment

SMALL = dict(n_features=8, n_per_class=3)
LABELS = [f'bird {i}' for i in range(6)]


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = qpm_timm.create_qpm('resnet18', 6, head='dense', **SMALL)
    w = placeholder_assignment(6, 8, 3)[:, torch.randperm(8)]
    model.set_qpm_head(torch.randperm(512)[:8], w, torch.rand(512), torch.rand(512) + 0.5)
    folder = tmp_path_factory.mktemp('export') / 'qpm'
    hub.save_pretrained(model.eval(), folder, label_names=LABELS)
    return model, folder


def test_export_writes_weights_timm_config_and_a_card_with_every_class_features(exported):
    model, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'qpm' and config['num_classes'] == 6 and config['label_names'] == LABELS
    assert config['model_args'] == {
        'backbone': 'resnet18', 'num_classes': 6, 'n_features': 8, 'n_per_class': 3, 'head': 'qpm',
        'in_chans': 3, 'global_pool': 'avg'}
    assert config['pretrained_cfg']['classifier'] == 'head.fc'
    card = (folder / 'README.md').read_text()
    for c, row in enumerate(model.class_weights):
        feats = ', '.join(f'f{j} (ch {int(model.head.selection[j])})' for j in torch.nonzero(row).flatten())
        assert f'| {LABELS[c]} | {feats} |' in card


@pytest.mark.parametrize('path', ['local-dir', 'overlay', 'checkpoint_path'])
def test_three_timm_loading_paths_give_identical_outputs(exported, path):
    model, folder = exported
    args = dict(backbone='resnet18', num_classes=6, **SMALL)
    if path == 'local-dir':
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    elif path == 'overlay':
        loaded = timm.create_model('qpm', pretrained=True, pretrained_cfg_overlay=dict(
            file=str(folder / 'model.safetensors')), **args)
    else:
        loaded = timm.create_model('qpm', checkpoint_path=str(folder / 'model.safetensors'), **args)
    x = torch.randn(2, 3, 64, 64)
    assert loaded.is_qpm
    assert torch.equal(loaded.eval()(x), model(x))


def test_registered_variant_loads_an_exported_file_and_adapts_to_another_class_count(tmp_path):
    source = timm.create_model('qpm_resnet18_cub', num_classes=200).eval()
    hub.save_pretrained(source, tmp_path / 'r18')
    file = str(tmp_path / 'r18' / 'model.safetensors')
    loaded = timm.create_model('qpm_resnet18_cub', pretrained=True, pretrained_cfg_overlay=dict(file=file)).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), source(x))
    with pytest.warns(UserWarning, match='fresh dense 10-class'):
        other = timm.create_model('qpm_resnet18_cub', pretrained=True, num_classes=10,
                                  pretrained_cfg_overlay=dict(file=file))
    assert not other.is_qpm and other(x).shape == (1, 10)
    assert torch.equal(other.backbone.conv1.weight, source.backbone.conv1.weight)


@pytest.mark.parametrize('damage', ['truncated', 'garbage'])
def test_damaged_safetensors_give_an_error_naming_the_file(exported, tmp_path, damage):
    _, folder = exported
    data = (folder / 'model.safetensors').read_bytes()
    bad = tmp_path / 'model.safetensors'
    bad.write_bytes(data[:len(data) // 2] if damage == 'truncated' else b'\x00garbage' * 10)
    with pytest.raises(ValueError, match=f'{bad}.*truncated or corrupted'):
        hub.read_weights(bad)
    with pytest.raises(ValueError, match=f'qpm_resnet18_cub \\({bad}\\) are truncated or corrupted'):
        timm.create_model('qpm_resnet18_cub', pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)))


def test_config_that_does_not_match_the_weights_is_refused(exported, tmp_path):
    _, folder = exported
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / 'config.json').read_text())
    config['model_args']['n_features'] = 10
    (tmp_path / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match='selection must have shape'):
        timm.create_model(f'local-dir:{tmp_path}', pretrained=True)
    config['model_args'].update(n_features=8, backbone='resnet34')
    (tmp_path / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match='does config.json match the weights'):
        timm.create_model(f'local-dir:{tmp_path}', pretrained=True)


def test_failed_export_leaves_the_earlier_export_intact(exported, tmp_path, monkeypatch):
    model, folder = exported
    target = tmp_path / 'out'
    hub.save_pretrained(model, target, label_names=LABELS)
    before = {f.name: f.read_bytes() for f in target.iterdir()}

    def boom(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(hub, 'save_config_for_hf', boom)
    with pytest.raises(OSError, match='disk full'):
        hub.save_pretrained(timm.create_model('qpm_resnet18_cub'), target)
    assert {f.name: f.read_bytes() for f in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ['out']  # no temporary folder left behind


def test_hub_configs_have_not_drifted_from_the_default_cfgs_table(tmp_path):
    from pathlib import Path
    committed = Path(__file__).resolve().parents[1] / 'hub_configs'
    assert hub.main(['write-configs', str(tmp_path)]) == 0
    variants = sorted(p.name for p in tmp_path.iterdir())
    assert variants == sorted(p.name for p in committed.iterdir() if p.is_dir())
    for variant in variants:
        match, mismatch, errors = filecmp.cmpfiles(committed / variant, tmp_path / variant,
                                                   ['config.json', 'README.md'], shallow=False)
        assert not mismatch and not errors, f'hub_configs/{variant} drifted: run python -m qpm_timm.hub ' \
                                            f'write-configs hub_configs ({mismatch + errors})'
    config = json.loads((committed / 'qpm_resnet50_cub' / 'config.json').read_text())
    assert config['pretrained_cfg']['hf_hub_id'] == 'qpm-timm/qpm_resnet50_cub'
    assert config['model_args']['n_features'] == 50 and config['num_classes'] == 200


def test_exported_input_size_and_normalisation_survive_local_dir_loading(tmp_path):
    model = qpm_timm.create_qpm('resnet18', 4, n_features=4, n_per_class=2)
    data = dict(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    hub.save_pretrained(model, tmp_path / 'q', data_config=data)
    cfg = timm.create_model(f'local-dir:{tmp_path / "q"}', pretrained=True).pretrained_cfg
    assert tuple(cfg['input_size']) == (3, 32, 32) and tuple(cfg['mean']) == (0.5, 0.5, 0.5)
    assert tuple(cfg['pool_size']) == (1, 1) and cfg['first_conv'] == 'backbone.conv1'


def _card_fields(card):
    """The card's ``| field | `json` |`` rows."""
    return {k: json.loads(v) for k, v in re.findall(r'^\| ([\w.]+) \| `(.*)` \|$', card, re.M)}


def _config_value(config, dotted):
    for part in dotted.split('.'):
        config = config[part]
    return config


def test_model_card_states_exactly_what_config_json_holds(tmp_path):
    """The embedded default's data config (64 px, the concepts mean/std) shows in the card as in config.json."""
    from qpm_timm.data.constants import CONCEPTS_IMG_SIZE, CONCEPTS_MEAN, CONCEPTS_STD
    model = qpm_timm.create_qpm('resnet18', 6, relu_after_norm=True, **SMALL)
    data = dict(input_size=(3, CONCEPTS_IMG_SIZE, CONCEPTS_IMG_SIZE), mean=CONCEPTS_MEAN, std=CONCEPTS_STD,
                crop_pct=1.0, crop_mode='squash', interpolation='bilinear')
    hub.save_pretrained(model, tmp_path / 'q', data_config=data)
    config = json.loads((tmp_path / 'q' / 'config.json').read_text())
    card = (tmp_path / 'q' / 'README.md').read_text()
    fields = _card_fields(card)
    stated = {'architecture', 'num_classes', 'model_args.n_features', 'model_args.n_per_class',
              'model_args.relu_after_norm'} | {f'pretrained_cfg.{k}' for k in data}
    assert stated <= set(fields)
    for dotted, value in fields.items():
        assert value == _config_value(config, dotted), dotted
    assert fields['pretrained_cfg.input_size'] == [3, 64, 64] and fields['pretrained_cfg.mean'] == list(CONCEPTS_MEAN)
    assert f"timm.create_model('local-dir:{tmp_path / 'q'}', pretrained=True)" in card
    assert 'ReLU before the binary layer' in card
    assert '<org>' not in card and '0.485' not in card and '224' not in card


def test_model_card_names_the_repository_and_carries_results_as_hub_model_index(exported):
    from huggingface_hub import ModelCard
    model, folder = exported
    config = json.loads((folder / 'config.json').read_text())
    results = [hub.RunResults('results.json (train.py)', dict(top1=87.5, top5=97.25), 'cub', 'val'),
               hub.RunResults('validate.py', dict(top1=87.25, sid_at_5=0.9))]
    card = hub.model_card(model, config, repo_id='org/qpm-birds', results=results)
    assert "timm.create_model('hf-hub:org/qpm-birds', pretrained=True)" in card
    assert '| top1 | 87.5 | results.json (train.py), cub val split |' in card
    assert '| sid_at_5 | 0.9 | validate.py |' in card
    evals = ModelCard(card).data.eval_results  # what the Hub reads from model-index
    assert [(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split, r.metric_type, r.metric_value)
            for r in evals] == [('image-classification', 'cub', 'CUB-200-2011', 'val', 'accuracy', 87.5),
                                ('image-classification', 'cub', 'CUB-200-2011', 'val', 'accuracy', 97.25)]
    assert ModelCard(card).data.model_name == 'qpm-birds'

"""Real backbones: timm pretrained weights (Hub, cache, offline, local file), checkpoints users have (QPM, plain
timm, torchvision), a trained timm classifier wrapped into a dense QPM, and ``fit_qpm`` = train.py's stages."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file

import qpm_timm
from helpers.hub_server import hub_client_env
from helpers.scripts import refused
from qpm_timm.data import create_qpm_loader, create_qpm_split
from qpm_timm.models import load_weights

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = 'test_resnet.r160_in1k'  # a tiny timm ResNet with a pretrained tag
REPO = f'timm/{BACKBONE}'  # where timm looks for its weights
DATA_ARGS = {'num_classes': 6, 'num_concepts': 6, 'images_per_class': 8}
TINY = ['--model', 'qpm', '--img-size', '40', '--n-features', '6', '--n-per-class', '2', '--solver-time-limit', '30',
        '--workers', '0', '-b', '16', '--no-progress', '--dataset-args', json.dumps(DATA_ARGS)]


def _seeded_backbone(num_classes: int = 1000) -> torch.nn.Module:
    """The tiny backbone with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=num_classes)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope='module')
def served_weights(tmp_path_factory):
    """A folder laid out as the Hub repository of ``timm/test_resnet.r160_in1k`` and its tensors."""
    folder = tmp_path_factory.mktemp('hub') / 'repo'
    model = _seeded_backbone()
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)
    return folder, load_file(str(folder / 'model.safetensors'))


def _run(args, env=None, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / 'train.py'), *args], capture_output=True, text=True,
                          env=env or dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT)), cwd=cwd,
                          timeout=600)


def _assert_backbone_is(state_dict, served, prefix='backbone.'):
    for name, tensor in served.items():
        if not name.startswith('fc.'):
            assert torch.equal(state_dict[prefix + name], tensor), name


_CREATE = """
import torch, qpm_timm
model = qpm_timm.create_qpm({backbone!r}, 1000, 16, 4, head='dense', pretrained_backbone=True)
torch.save(dict(model.state_dict(), adopted=torch.tensor(model.adopted_classifier)), {out!r})
"""


def test_pretrained_backbone_loads_its_tags_hub_weights_and_classifier_then_works_offline(
        tmp_path, hub_server, served_weights):
    folder, served = served_weights
    hub_server.add_repo(REPO, folder)
    hf_home = tmp_path / 'hf_home'
    for offline in (False, True):
        out = tmp_path / f'offline{offline}.pt'
        hub_server.clear_requests()
        hub_server.run_python(_CREATE.format(backbone=BACKBONE, out=str(out)), hf_home=hf_home, offline=offline)
        assert bool(hub_server.downloads(REPO, 'model.safetensors')) != offline  # downloaded once, then cached
        if offline:
            assert hub_server.requests == []
        got = torch.load(out)
        _assert_backbone_is(got, served)
        # the pretrained classifier fits the 1000 classes: it is the dense head (the ImageNet route)
        assert got['adopted'] and torch.equal(got['head.fc.weight'], served['fc.weight'])
        assert torch.equal(got['head.fc.bias'], served['fc.bias'])


def test_train_py_pretrained_starts_from_the_hub_weights_or_a_local_file_and_does_not_export_that_flag(
        tmp_path, hub_server, served_weights):
    folder, served = served_weights
    hub_server.add_repo(REPO, folder)
    env = dict(hub_client_env(hub_server.endpoint, tmp_path / 'hf_home'), OMP_NUM_THREADS='1')
    stageless = ['--epochs', '0', '--finetune-epochs', '0', '--output', str(tmp_path)]  # export = loaded weights
    runs = {'hub': ['--pretrained', '--backbone', BACKBONE],
            'file': ['--pretrained-path', str(folder / 'model.safetensors'), '--backbone', 'test_resnet']}
    for name, args in runs.items():
        proc = _run([*TINY, *stageless, *args, '--experiment', name], env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        exported = load_file(str(tmp_path / name / 'export' / 'model.safetensors'))
        _assert_backbone_is(exported, served)
        config = json.loads((tmp_path / name / 'export' / 'config.json').read_text())
        assert not {'pretrained_backbone', 'backbone_pretrained_cfg_overlay'} & set(config['model_args'])
    assert hub_server.downloads(REPO, 'model.safetensors')


def test_a_trained_timm_classifier_wrapped_into_a_qpm_gives_the_same_logits():
    classifier = _seeded_backbone(num_classes=7)
    x = torch.randn(3, 3, 48, 48)
    dense = qpm_timm.from_timm_classifier(classifier, n_features=8, n_per_class=2).eval()
    assert not dense.is_qpm and dense.num_classes == 7
    with torch.no_grad():
        torch.testing.assert_close(dense(x), classifier(x), rtol=0, atol=1e-6)
    convnext = timm.create_model('convnext_atto', num_classes=7)
    with pytest.raises(ValueError, match='not global pooling \\+ one linear layer'):
        qpm_timm.from_timm_classifier(convnext, n_features=8, n_per_class=2)


def test_plain_timm_and_torchvision_checkpoints_load_into_the_backbone_and_a_fitting_classifier_into_the_head():
    tv = torchvision.models.resnet18(num_classes=7)
    torch.nn.init.normal_(tv.fc.weight)
    model = qpm_timm.create_qpm('resnet18', 7, 8, 2, head='dense')
    load_weights(model, tv.state_dict(), source='torchvision')
    assert torch.equal(model.backbone.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert model.adopted_classifier and torch.equal(model.head.fc.weight, tv.fc.weight)
    other = qpm_timm.create_qpm('resnet18', 5, 8, 2, head='dense')
    fresh = other.head.fc.weight.clone()
    with pytest.raises(ValueError, match='resnet18'):
        load_weights(other, timm.create_model('resnet34').state_dict(), source='r34.pth')
    assert torch.equal(other.head.fc.weight, fresh)  # nothing changed by the refused checkpoint
    load_weights(other, tv.state_dict(), source='torchvision')  # 7 classes: classifier dropped, backbone loaded
    assert not other.adopted_classifier and torch.equal(other.head.fc.weight, fresh)
    assert torch.equal(other.backbone.conv1.weight, tv.conv1.weight)
    with pytest.raises(ValueError, match='layer4.1.conv2.weight has shape'):
        bad = dict(tv.state_dict(), **{'layer4.1.conv2.weight': torch.zeros(1)})
        load_weights(model, bad)


def test_fit_qpm_gives_the_solution_of_train_py_stages_for_the_same_seed(tmp_path):
    classifier = _seeded_backbone(num_classes=6)
    ckpt = tmp_path / 'classifier.pth'
    torch.save({'state_dict': classifier.state_dict()}, ckpt)  # a timm training checkpoint
    proc = _run([*TINY, '--backbone', 'test_resnet', '--skip-dense', '--initial-checkpoint', str(ckpt),
                 '--finetune-epochs', '0', '--output', str(tmp_path), '--experiment', 'run', '--seed', '3'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = json.loads((tmp_path / 'run' / 'solution.json').read_text())

    dense = qpm_timm.from_timm_classifier(classifier, n_features=6, n_per_class=2)
    images = create_qpm_split('concepts', split='train', transform_size=40, **DATA_ARGS)
    fit = qpm_timm.fit_qpm(dense, create_qpm_loader(images, 16), time_limit=30, seed=3)
    assert fit.model is dense and dense.is_qpm
    assert fit.solution.selected.tolist() == expected['selected']
    assert fit.solution.assignment.astype(int).tolist() == expected['assignment']
    assert torch.equal(dense.head.selection, torch.as_tensor(fit.selected_channels))
    with pytest.raises(ValueError, match='needs a dense QPMModel'):
        qpm_timm.fit_qpm(dense, None)


@pytest.mark.parametrize('make_args, message', [
    (lambda tmp: ['--backbone', 'test_resnet.nope'], "test_resnet has no pretrained tag 'nope'"),
    (lambda tmp: ['--backbone', 'test_resnet', '--initial-checkpoint', tmp / 'r18.pth'],
     'tensor bn1.weight has shape (64,), test_resnet needs (32,)'),
    (lambda tmp: ['--backbone', 'test_resnet', '--initial-checkpoint', tmp / 'qpm5.safetensors'],
     'checkpoint has 5 classes, this model 6'),
    (lambda tmp: ['--backbone', 'test_resnet', '--data-dir', tmp / 'empty', '--dataset-args', '{}'],
     'holds no images'),
])
def test_bad_backbones_checkpoints_and_data_exit_2_naming_the_problem_and_write_nothing(tmp_path, make_args, message):
    torch.save(timm.create_model('resnet18').state_dict(), tmp_path / 'r18.pth')
    qpm_timm.hub.save_pretrained(qpm_timm.create_qpm('test_resnet', 5, 6, 2), tmp_path / 'qpm5')
    os.replace(tmp_path / 'qpm5' / 'model.safetensors', tmp_path / 'qpm5.safetensors')
    (tmp_path / 'empty' / 'train' / 'a').mkdir(parents=True)
    (tmp_path / 'empty' / 'val' / 'a').mkdir(parents=True)
    code, err = refused('train.py', [*TINY, *make_args(tmp_path), '--output', tmp_path / 'out', '--experiment', 'x'])
    assert code == 2 and message in err, err[-2000:]
    assert not (tmp_path / 'out' / 'x').exists()

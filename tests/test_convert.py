"""The authors' released checkpoint format loads in timm, directly and through the converter.

A checkpoint in the authors' exact key layout is built from random weights with torchvision's ResNet-50 (the
backbone of their code: torchvision's keys, no ``fc``; their CUB models set layer3/layer4 to stride 1), and their
forward pass is computed here from their architecture description, independently of qpm_timm's model:
layer4 -> ReLU -> select -> average pool -> (x - mean) / clamp(std, 1e-6) [-> ReLU, CHiQPM] -> x @ W^T.
"""
import json
import os
import re

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import qpm_timm  # noqa: F401  (registers the qpm_* models)
from qpm_timm import convert
from qpm_timm.models.authors import STD_MIN

VARIANT = 'qpm_resnet50_cub'
CLASSES, N_F, N_WC = 200, 50, 5


def _authors_network(seed: int) -> nn.Module:
    """torchvision ResNet-50 with the authors' reduced strides and random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet50()
    for layer in (net.layer3, net.layer4):
        layer[0].conv2.stride = (1, 1)
        layer[0].downsample[0].stride = (1, 1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.num_batches_tracked.fill_(1234)
    return net.eval()


def _features(net, x) -> torch.Tensor:
    """Their feature maps: layer4 -> ReLU."""
    with torch.no_grad():
        f = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return F.relu(net.layer4(net.layer3(net.layer2(net.layer1(f)))))


def _authors_head(seed: int, net):
    """selection, mean, std (of the selected features over a calibration batch, as their statistics pass
    computes them), W (200 distinct rows of 5 ones), as the authors store them."""
    gen = torch.Generator().manual_seed(seed)
    rows = set()
    while len(rows) < CLASSES:
        rows.add(tuple(sorted(torch.randperm(N_F, generator=gen)[:N_WC].tolist())))
    weight = torch.zeros(CLASSES, N_F)
    for c, row in enumerate(sorted(rows)):
        weight[c, list(row)] = 1.
    selection = torch.randperm(2048, generator=gen)[:N_F]
    pooled = _features(net, torch.randn(8, 3, 64, 64, generator=gen))[:, selection].mean((2, 3))
    return selection, pooled.mean(0), pooled.std(0) + 0.1, weight


def _authors_forward(net, head, x, relu: bool) -> torch.Tensor:
    """Their forward pass (eval): layer4 -> ReLU -> select -> avg pool -> normalise (clamped std) [-> ReLU] -> W."""
    selection, mean, std, weight = head
    z = (_features(net, x)[:, selection].mean((2, 3)) - mean) / torch.clamp(std, min=STD_MIN)
    return (F.relu(z) if relu else z) @ weight.t()


def _state_dict(net, head):
    selection, mean, std, weight = head
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith('fc.')}
    sd.update({'linear.selection': selection, 'linear.mean': mean, 'linear.std': std, 'linear.layer.weight': weight})
    return sd


@pytest.fixture(scope='module')
def authors(tmp_path_factory):
    """(path of their .pth, network, head, input) of a random checkpoint in the authors' layout."""
    net = _authors_network(0)
    head = _authors_head(1, net)
    path = tmp_path_factory.mktemp('authors') / 'qpm_50_5_FinetunedModel.pth'
    torch.save(_state_dict(net, head), path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    return path, net, head, x


@pytest.mark.parametrize('relu', [False, True], ids=['qpm', 'chiqpm'])
def test_direct_load_of_the_authors_file_reproduces_their_forward(authors, relu):
    path, net, head, x = authors
    model = timm.create_model(VARIANT, pretrained=True, relu_after_norm=relu,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, _authors_forward(net, head, x, relu), rtol=1e-5, atol=1e-5)
    assert torch.equal(model.head.selection, head[0]) and torch.equal(model.class_weights, head[3])


@pytest.mark.parametrize('source, flags, crop_mode', [('authors-qpm', ['--no-crop-to-bbox'], 'center'),
                                                      ('authors-chiqpm', [], 'squash')])
def test_converter_reproduces_their_forward_and_the_export_reloads_identically(authors, tmp_path, source, flags,
                                                                               crop_mode, capsys):
    path, net, head, x = authors
    out = tmp_path / 'converted'
    classes = tmp_path / 'classes.txt'  # CUB's format: "<id> <name>"
    classes.write_text(''.join(f'{c + 1} {c + 1:03d}.Bird_{c}\n' for c in range(CLASSES)))
    variant = 'chiqpm_resnet50_cub' if source == 'authors-chiqpm' else VARIANT  # their release's variant
    assert convert.main(['--source', source, '--checkpoint', str(path), '--variant', variant, '--output', str(out),
                         '--label-names', str(classes), *flags]) == 0
    assert f'local-dir:{out}' in capsys.readouterr().out
    relu = source == 'authors-chiqpm'
    reloaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    direct = convert.load_authors_checkpoint(str(path), variant, source)
    with torch.no_grad():
        logits = reloaded(x)
        assert torch.equal(logits, direct(x))
    torch.testing.assert_close(logits, _authors_forward(net, head, x, relu), rtol=1e-5, atol=1e-5)
    config = json.loads((out / 'config.json').read_text())
    assert config['model_args'].get('relu_after_norm', False) is relu and config['architecture'] == variant
    assert config['label_names'][:2] == ['001.Bird_0', '002.Bird_1'] and len(config['label_names']) == CLASSES
    assert {k: config['pretrained_cfg'][k] for k in ('input_size', 'crop_pct', 'crop_mode', 'interpolation')} == \
        dict(input_size=[3, 224, 224], crop_pct=1.0, crop_mode=crop_mode, interpolation='bilinear')
    assert config['pretrained_cfg']['mean'] == [0.4853, 0.4964, 0.4295]  # the authors' CUB normalisation
    # provenance: their file, their repository, no licence claimed for their weights
    assert config['pretrained_cfg']['license'] == 'other' and path.name in config['pretrained_cfg']['notes']
    assert config['pretrained_cfg']['origin_url'].endswith('/CHiQPM' if relu else '/QPM')
    assert 'license: other' in (out / 'README.md').read_text()


def test_the_authors_eval_transform_is_known_for_cub_and_cars_only():
    assert convert.authors_data_config('qpm_resnet50_cars')['crop_mode'] == 'center'
    with pytest.raises(ValueError, match='qpm_resnet50_imagenet: the authors released no imagenet checkpoint'):
        convert.authors_data_config('qpm_resnet50_imagenet')


def test_a_non_positive_std_is_clamped_like_the_authors_clamp(tmp_path):
    """Their normalisation divides by clamp(std, 1e-6); QPMHead divides by std, so the converter clamps once."""
    net = _authors_network(3)
    head = _authors_head(4, net)
    head[2][:3] = torch.tensor([0., -0.5, 1e-9])
    path = tmp_path / 'clamped.pth'
    torch.save(_state_dict(net, head), path)
    model = convert.load_authors_checkpoint(str(path), VARIANT)
    assert torch.equal(model.head.std[:3], torch.full((3,), STD_MIN)) and torch.equal(model.head.std[3:], head[2][3:])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(x), _authors_forward(net, head, x, False), rtol=1e-5, atol=1e-5)


def test_num_batches_tracked_may_be_absent(authors, tmp_path):
    path, net, head, x = authors
    sd = {k: v for k, v in torch.load(path).items() if not k.endswith('num_batches_tracked')}
    torch.save(sd, tmp_path / 'no_nbt.pth')
    model = convert.load_authors_checkpoint(str(tmp_path / 'no_nbt.pth'), VARIANT)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _authors_forward(net, head, x, False), rtol=1e-5, atol=1e-5)


class _Payload:
    """A pickle with code: unpickling it would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def _bad_file(kind: str, authors_path, folder):
    path = folder / f'{kind}.pth'
    if kind == 'timm_checkpoint':
        torch.save(timm.create_model('resnet50').state_dict(), path)
    elif kind == 'truncated':
        data = authors_path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == 'pickle_with_code':
        torch.save({'conv1.weight': torch.zeros(1), 'x': _Payload(folder / 'ran')}, path)
    elif kind == 'with_a_bias':
        sd = torch.load(authors_path)
        sd['linear.layer.bias'] = torch.zeros(CLASSES)
        torch.save(sd, path)
    return path


_REFUSALS = {
    'timm_checkpoint': r"not in the authors' QPM format .* 4 missing \(linear.layer.weight, linear.mean, "
                       r"linear.selection, linear.std\) and 2 not in the format \(fc.bias, fc.weight\)",
    'truncated': r'not a readable checkpoint, truncated or corrupted',
    'pickle_with_code': r'not a plain state dict of tensors: torch.load\(weights_only=True\) refused it',
    'with_a_bias': r"not in the authors' QPM format .* 1 not in the format \(linear.layer.bias\)",
}


@pytest.mark.parametrize('kind', sorted(_REFUSALS))
def test_files_that_are_not_theirs_are_refused_by_converter_and_direct_load(authors, tmp_path, kind, capsys):
    path = _bad_file(kind, authors[0], tmp_path)
    out = tmp_path / 'out'
    assert convert.main(['--source', 'authors-qpm', '--checkpoint', str(path), '--variant', VARIANT,
                         '--output', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and str(path) in err
    assert re.search(_REFUSALS[kind], err), err
    with pytest.raises(ValueError, match=_REFUSALS[kind]):
        timm.create_model(VARIANT, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not out.exists() and not (tmp_path / 'ran').exists()

"""The QPM model: head states, registered variants, timm's model contract, loading rules, bad input."""
import warnings

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models._manipulate import group_parameters
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import qpm_timm
from qpm_timm.models import HF_HUB_ORG, VARIANT_ARGS, QPMModel
from qpm_timm.models.head import placeholder_assignment

VARIANTS = sorted(VARIANT_ARGS)
SMALL = dict(n_features=8, n_per_class=3)


def _qpm(backbone='resnet18', num_classes=6, head='qpm', **kwargs):
    return qpm_timm.create_qpm(backbone, num_classes, **{**SMALL, 'head': head, **kwargs})


def _solved(model, seed=0):
    """Set a valid random QPM head, as the solver would."""
    g = torch.Generator().manual_seed(seed)
    selection = torch.randperm(model.num_features, generator=g)[:model.n_features]
    assignment = placeholder_assignment(model.num_classes, model.n_features, model.n_per_class)
    assignment = assignment[:, torch.randperm(model.n_features, generator=g)]
    mean = torch.rand(model.num_features, generator=g)
    std = torch.rand(model.num_features, generator=g) + 0.5
    model.set_qpm_head(selection, assignment.bool(), mean, std)
    return model


def test_registered_variants_have_complete_default_cfgs():
    expected = {'qpm_resnet50_cub': 200, 'qpm_resnet50_cars': 196, 'qpm_resnet50_imagenet': 1000,
                'qpm_resnet34_cub': 200, 'qpm_resnet18_cub': 200}
    assert set(timm.list_models('qpm_*')) >= set(expected)
    for name, classes in expected.items():
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.num_classes == classes
        assert cfg.hf_hub_id == f'{HF_HUB_ORG}/{name}' and cfg.hf_hub_filename == 'model.safetensors'
        assert cfg.input_size == (3, 224, 224) and len(cfg.mean) == 3 and len(cfg.std) == 3
        assert cfg.crop_pct and cfg.license and cfg.paper_ids
        assert cfg.pool_size == ((7, 7) if name.endswith('imagenet') else (28, 28))


@pytest.mark.parametrize('name', VARIANTS)
def test_variant_feature_map_matches_pool_size_and_reduced_strides(name):
    model = timm.create_model(name, device='meta')
    cfg = model.pretrained_cfg
    out = model.forward_features(torch.randn(1, *cfg['input_size'], device='meta'))
    assert tuple(out.shape[1:]) == (model.num_features, *cfg['pool_size'])
    assert model.forward_head(out, pre_logits=True).shape == (1, model.head_hidden_size) == (1, 50)
    assert model(torch.randn(1, *cfg['input_size'], device='meta')).shape == (1, cfg['num_classes'])


def test_qpm_logits_are_normalised_selected_features_times_binary_assignment():
    model = _solved(_qpm()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.forward_features(x)
        h = model.head
        pooled = maps[:, h.selection].mean((2, 3))
        expected = ((pooled - h.mean) / h.std) @ h.fc.weight.t()
        out = model.forward_with_features(x)
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert out.feature_maps.shape == (2, 8, *maps.shape[2:]) and torch.allclose(out.pooled, pooled, atol=1e-6)
    assert set(model.class_weights.unique().tolist()) == {0.0, 1.0}
    assert [n for n, _ in model.head.named_parameters()] == []  # W, selection, mean, std are buffers
    assert {n for n, _ in model.head.named_buffers()} == {'selection', 'mean', 'std', 'fc.weight'}


def test_dense_head_hands_out_all_feature_maps_and_linear_weights():
    model = _qpm(head='dense').eval()
    out = model.forward_with_features(torch.randn(2, 3, 64, 64))
    assert not model.is_qpm and out.feature_maps.shape[1] == model.num_features == 512
    assert out.pooled.shape == (2, 512) and out.logits.shape == (2, 6)
    assert model.class_weights is model.head.fc.weight and model.head.drop.p == 0.2
    _solved(model)
    assert model.is_qpm and model.head.drop.p == 0.1 and model.head_hidden_size == 8


def test_feature_dropout_defaults_follow_the_recipe_and_drop_rate_overrides():
    assert _qpm(head='dense', drop_rate=0.3).head.drop.p == 0.3
    assert _qpm().head.drop.p == 0.1


@pytest.mark.parametrize('backbone', ['convnext_atto', 'efficientnet_b0', 'resnet18'])
def test_create_qpm_wraps_other_timm_cnn_families(backbone):
    model = _solved(_qpm(backbone, head='dense'))
    x = torch.randn(2, 3, 64, 64)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    cfg = model.pretrained_cfg
    assert cfg['first_conv'] + '.weight' in model.state_dict() and cfg['classifier'] + '.weight' in model.state_dict()
    assert cfg['mean'] == timm.models.get_pretrained_cfg(backbone).mean


# --- timm's model contract (mirrors the checks of timm's tests/test_models.py) ----------------------------------
REAL = ['qpm_resnet18_cub', 'qpm_resnet50_imagenet']  # real forward/backward at 64 px
META = VARIANTS + ['qpm']  # structure checks on the meta device


@pytest.mark.parametrize('name', REAL)
def test_forward_has_no_nans_and_grad_checkpointing_keeps_outputs(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        model.set_grad_checkpointing()
        out2 = model(x)
    assert not torch.isnan(out).any() and torch.allclose(out, out2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', REAL)
def test_backward_with_42_classes_gives_every_parameter_a_gradient(name):
    model = timm.create_model(name, num_classes=42).train()
    out = model(torch.randn(2, 3, 64, 64))
    out.mean().backward()
    assert out.shape == (2, 42)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize('name', META)
def test_default_cfg_contract_on_meta_device(name):
    with pytest.raises(TypeError):
        timm.create_model(name, device='meta', not_a_model_arg=1)
    model = timm.create_model(name, device='meta').eval()
    assert all(t.device.type == 'meta' for t in [*model.parameters(), *model.buffers()])
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    assert model.in_chans == model.default_cfg['input_size'][0]
    cfg, x = model.default_cfg, torch.randn(1, *model.default_cfg['input_size'], device='meta')
    feats = model.forward_features(x)
    assert tuple(feats.shape[1:]) == (model.num_features, *cfg['pool_size'])
    pre = model.forward_head(feats, pre_logits=True)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == pre.shape == (1, model.head_hidden_size)
    model.reset_classifier(0, '')
    assert model(x).shape[-2:] == tuple(cfg['pool_size'])
    model = timm.create_model(name, device='meta', num_classes=0, global_pool='')
    assert model(x).dim() == 4
    model = timm.create_model(name, device='meta', num_classes=0)
    assert model(x).shape == pre.shape


@pytest.mark.parametrize('name', ['qpm_resnet18_cub', 'qpm'])
def test_reset_classifier_keeps_device_dtype_training_mode_and_frozen_weights(name):
    model = timm.create_model(name, device='meta').to(dtype=torch.float64).train()
    model.reset_classifier(0)
    model.reset_classifier(2)
    params = list(model.get_classifier().parameters())
    assert params and all(p.device.type == 'meta' and p.dtype == torch.float64 for p in params)
    assert all(m.training for m in model.modules())
    frozen = timm.create_model(name, device='meta').requires_grad_(False)
    frozen.reset_classifier(0)
    frozen.reset_classifier(0, '')
    assert not any(p.requires_grad for p in frozen.parameters())


def test_bfloat16_after_a_forward_torchscript_fx_and_features_only():
    model = _solved(_qpm()).eval()
    x = torch.randn(1, 3, 64, 64)
    model(x)
    assert model.to(torch.bfloat16)(x.to(torch.bfloat16)).dtype == torch.bfloat16
    model.float()
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(x), model(x), atol=1e-5)
    tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    for pool in ('avg', ''):  # torch.fx, traced as timm's fx tests trace the model
        if pool == '':
            model.reset_classifier(0, pool)
        last = get_graph_node_names(model, tracer_kwargs=tracer)[1][-1]
        traced = create_feature_extractor(model, return_nodes=[last], tracer_kwargs=tracer)
        assert torch.allclose(traced(x)[last], model(x), atol=1e-5)
    feats = timm.create_model('qpm_resnet18_cub', features_only=True)
    outs = feats(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == feats.feature_info.channels()
    assert feats.feature_info.reduction() == [2, 4, 8, 8, 8]  # reduced strides
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 8, 8]


# --- loading rules ----------------------------------------------------------------------------------------------
def test_head_state_follows_the_checkpoint():
    qpm = _solved(_qpm()).eval()
    dense = _qpm(head='dense').eval()
    dense.load_state_dict(qpm.state_dict())
    assert dense.is_qpm
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(dense(x), qpm(x))
    back = _qpm(head='dense')
    qpm.load_state_dict(back.state_dict())
    assert not qpm.is_qpm and torch.equal(qpm.head.fc.weight, back.head.fc.weight)


def test_class_count_mismatch_refused_strictly_and_adapted_to_a_dense_head_otherwise():
    source = _solved(_qpm()).state_dict()
    target = _qpm(num_classes=4)
    with pytest.raises(ValueError, match='6 classes, this model 4'):
        target.load_state_dict(source)
    with pytest.warns(UserWarning, match='fresh dense 4-class'):
        target.load_state_dict(source, strict=False)
    assert not target.is_qpm and target.head.fc.weight.shape == (4, 512)
    assert torch.equal(target.backbone.conv1.weight, source['backbone.conv1.weight'])
    features = _qpm(num_classes=0)
    features.load_state_dict({k: v for k, v in source.items() if k != 'head.fc.weight'})
    assert features.is_qpm and torch.equal(features.head.selection, source['head.selection'])


# --- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs, message', [
    (dict(backbone='not_a_backbone'), 'unknown backbone'),
    (dict(n_features=3, n_per_class=4), 'n_per_class=4 > n_features=3'),
    (dict(num_classes=57, n_features=8, n_per_class=3), r'binomial\(n_features=8, n_per_class=3\) = 56'),
    (dict(adapter_depth=-1), 'adapter_depth must be an integer >= 0'),
    (dict(head='sparse'), r"head must be one of \('dense', 'qpm', 'sldd', 'qsenn', 'glm'\), got 'sparse'"),
])
def test_impossible_models_are_refused_with_a_clear_error(kwargs, message):
    args = dict(backbone='resnet18', num_classes=6, **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        qpm_timm.create_qpm(**args)


def _head_args(model):
    sel = torch.arange(model.n_features)
    w = placeholder_assignment(model.num_classes, model.n_features, model.n_per_class)
    return dict(selection=sel, assignment=w, mean=torch.zeros(8), std=torch.ones(8))


@pytest.mark.parametrize('change, message', [
    (dict(assignment=torch.ones(5, 8)), r'shape \(num_classes=6, n_features=8\)'),
    (dict(assignment=placeholder_assignment(6, 8, 3) * 2), 'binary'),
    (dict(assignment=placeholder_assignment(6, 8, 4)), 'exactly n_per_class=3'),
    (dict(assignment=placeholder_assignment(6, 8, 3)[[0, 0, 1, 2, 3, 4]]), 'classes 0 and 1 have the same'),
    (dict(selection=torch.tensor([0, 1, 2, 3, 4, 5, 6, 512])), r'lie in \[0, 512\)'),
    (dict(selection=torch.tensor([0, 1, 2, 3, 4, 5, 6, 6])), 'repeats a channel'),
    (dict(selection=torch.arange(7)), r'shape \(8,\)'),
    (dict(std=torch.zeros(8)), 'std must be > 0'),
    (dict(mean=torch.zeros(9)), r'mean must have shape \(8,\) or \(512,\)'),
])
def test_set_qpm_head_refuses_invalid_heads(change, message):
    model = _qpm(head='dense')
    args = {**_head_args(model), **change}
    with pytest.raises(ValueError, match=message):
        model.set_qpm_head(**args)
    assert not model.is_qpm  # the model is untouched


def test_isinstance_of_registered_models():
    assert isinstance(timm.create_model('qpm_resnet18_cub', device='meta'), QPMModel)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        timm.create_model('qpm', backbone='resnet18', device='meta', num_classes=3, **SMALL)

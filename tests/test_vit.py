"""Vision Transformer backbones, the token-wise adapter and the frozen backbone (docs/METHOD.md, "ViT backbones and the
adapter")."""
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import yaml
from timm.models import generate_default_cfgs, register_model

import qpm_timm
from qpm_timm import hub
from qpm_timm.data import qpm_data_config
from qpm_timm.fit import fit_qpm, problem_from_statistics
from qpm_timm.losses import ActivationL1
from qpm_timm.models import VARIANTS
from qpm_timm.models.variants import variant_dataset
from qpm_timm.stats import collect_statistics

CONFIGS = Path(__file__).resolve().parents[1] / 'qpm_timm' / 'configs'
TINY_VIT = dict(img_size=56, embed_dim=64, depth=2, num_heads=2)  # 4 x 4 patches of 14 px, 4 registers + class token
SIZES = dict(num_classes=4, n_features=6, n_per_class=2)


def tiny_vit_qpm(**kwargs) -> qpm_timm.QPMModel:
    torch.manual_seed(0)
    return qpm_timm.create_qpm('vit_small_patch14_reg4_dinov2', head='dense', **SIZES, **{**TINY_VIT, **kwargs})


def loader(n=16, size=56, seed=0, classes=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % classes
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def test_vit_map_is_the_patch_grid_of_normalised_tokens_without_prefix_tokens():
    model = tiny_vit_qpm().eval()
    vit = model.backbone
    x = torch.randn(2, 3, 56, 56)
    maps = model.forward_backbone(x)
    assert model.token_backbone and vit.num_prefix_tokens == 5
    assert maps.shape == (2, 64, 4, 4)  # the 14 px patch grid of a 56 px image
    tokens = vit.forward_features(x)  # (N, 5 + 16, C), after the final norm
    patch = tokens[:, vit.num_prefix_tokens:].reshape(2, 4, 4, 64).permute(0, 3, 1, 2)
    torch.testing.assert_close(maps, patch)
    for prefix in range(vit.num_prefix_tokens):  # no class or register token is anywhere in the map
        flat = maps.flatten(2).transpose(1, 2)
        assert not torch.isclose(flat, tokens[:, prefix:prefix + 1]).all(-1).any()
    assert model.pretrained_cfg['pool_size'] == (4, 4) and model.pretrained_cfg['fixed_input_size']


def test_vit_qpm_trains_solves_exports_and_reloads_with_the_same_outputs(tmp_path):
    model = tiny_vit_qpm(adapter_depth=2, adapter_hidden=32, adapter_dim=16)
    assert model.num_features == 16 and model.backbone_features == 64
    out = model.train().forward_with_features(torch.randn(4, 3, 56, 56))
    assert out.feature_maps.shape == (4, 16, 4, 4)
    (out.logits.sum() + out.feature_maps.mean()).backward()
    assert all(p.grad is not None for p in model.parameters()), 'every parameter receives a gradient'
    fit = fit_qpm(model, loader(), effort=1, seed=0)
    assert model.is_qpm and fit.solution.assignment.sum(1).tolist() == [2] * 4
    assert set(fit.selected_channels.tolist()) <= set(range(16))  # adapter channels, not the backbone's
    model.eval()
    hub.save_pretrained(model, tmp_path / 'export')
    args = json.loads((tmp_path / 'export' / 'config.json').read_text())['model_args']
    assert (args['adapter_depth'], args['adapter_hidden'], args['adapter_dim']) == (2, 32, 16)
    assert 'is adapter output channel `c`' in (tmp_path / 'export' / 'README.md').read_text()
    reloaded = timm.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True).eval()
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(reloaded.forward_with_features(x).feature_maps,
                                   model.forward_with_features(x).feature_maps, rtol=0, atol=1e-5)


def test_fit_qpm_says_whether_it_solved_or_read_its_solution_back(tmp_path):
    """train.py adds the solve's seconds to its timings only when fit_qpm solved (a resumed run reads it back)."""
    files = dict(statistics_path=tmp_path / 'statistics.npz', solution_path=tmp_path / 'solution.json')
    first = fit_qpm(tiny_vit_qpm(), loader(), effort=1, seed=0, **files)
    again = fit_qpm(tiny_vit_qpm(), loader(), effort=1, seed=0, **files)
    assert first.solved and not again.solved
    assert again.solution.assignment.tolist() == first.solution.assignment.tolist()


def test_dynamic_img_size_vit_takes_non_square_inputs():
    model = tiny_vit_qpm(dynamic_img_size=True).eval()
    assert not model.pretrained_cfg['fixed_input_size']
    out = model.forward_with_features(torch.randn(1, 3, 56, 98))
    assert out.feature_maps.shape == (1, 64, 4, 7)


def test_non_square_fixed_size_vit_maps_follow_its_grid():
    model = tiny_vit_qpm(img_size=(42, 70)).eval()
    assert model.pretrained_cfg['input_size'] == (3, 42, 70) and model.pretrained_cfg['pool_size'] == (3, 5)
    assert model.forward_backbone(torch.randn(1, 3, 42, 70)).shape == (1, 64, 3, 5)


class _TokensOnly(nn.Module):
    """A backbone whose features are tokens with no spatial layout (like a text or set encoder)."""

    def __init__(self, num_classes=0, global_pool='', **kwargs):
        super().__init__()
        self.num_features = 8
        self.proj = nn.Linear(3, 8)
        self.feature_info = [dict(module='proj', num_chs=8, reduction=1)]

    def forward_features(self, x):
        return self.proj(x.flatten(2).transpose(1, 2))  # (N, H*W, 8)

    def reset_classifier(self, num_classes, global_pool=None):
        pass


# read by timm's registry
default_cfgs = generate_default_cfgs({'tokens_only_test_backbone': dict(input_size=(3, 8, 8))})


@register_model
def tokens_only_test_backbone(pretrained=False, **kwargs):
    model = _TokensOnly(**kwargs)
    model.pretrained_cfg = default_cfgs['tokens_only_test_backbone'].default.to_dict()
    return model


def test_backbone_without_spatial_map_is_refused_naming_what_it_returns():
    with pytest.raises(ValueError, match=r'forward_features returns shape \(1, 64, 8\).*no forward_intermediates'):
        qpm_timm.create_qpm('tokens_only_test_backbone', **SIZES)


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics_while_adapter_trains():
    torch.manual_seed(0)
    model = qpm_timm.create_qpm('resnet18', head='dense', adapter_depth=1, adapter_dim=16, **SIZES)
    model.freeze_backbone()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in model.adapter.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(not p.requires_grad for p in model.backbone.parameters())
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model.train()
    assert not model.backbone.training and model.adapter.training
    for x, y in loader(size=32):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), 'backbone weights and BN running stats unchanged'
    assert any(not torch.equal(adapter_before[k], v) for k, v in model.adapter.state_dict().items())


def test_frozen_vit_keeps_its_layernorm_and_weights():
    model = tiny_vit_qpm(adapter_depth=1, adapter_dim=16)
    model.freeze_backbone()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for x, y in loader():
        nn.functional.cross_entropy(model.train()(x), y).backward()
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


def test_reading_backbone_maps_gives_the_outputs_of_the_images():
    model = tiny_vit_qpm(adapter_depth=2, adapter_hidden=32, adapter_dim=16).eval()
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        maps = model.forward_backbone(x)
        expected = model.forward_with_features(x)
        with model.reading_backbone_maps():
            got = model.forward_with_features(maps)
        assert not model.input_is_backbone_maps
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_statistics_read_the_adapters_maps():
    model = tiny_vit_qpm(adapter_depth=1, adapter_dim=12).eval()
    stats = collect_statistics(model, loader(), 4)
    assert stats.A.shape == (12, 4)  # one row per adapter channel


def test_solve_without_locality_drops_the_bias():
    model = tiny_vit_qpm().eval()
    stats = collect_statistics(model, loader(), 4)
    with_b, _ = problem_from_statistics(stats, 6, 2)
    without_b, _ = problem_from_statistics(stats, 6, 2, locality=False)
    assert with_b.B is not None and not torch.as_tensor(with_b.B).eq(0).all()
    assert without_b.B is None or torch.as_tensor(without_b.B).eq(0).all()


def test_activation_l1_is_the_weighted_mean_absolute_activation():
    maps = torch.tensor([[[[1.0, -3.0]]]])  # mean |.| = 2
    pooled = torch.tensor([[-4.0, 2.0]])  # mean |.| = 3
    assert ActivationL1(5, 1)(maps, pooled).item() == pytest.approx(5 * 2 + 1 * 3)
    assert ActivationL1()(maps, pooled).item() == 0
    with pytest.raises(ValueError, match='maps_weight must be >= 0'):
        ActivationL1(-1, 0)


def test_bad_adapter_sizes_are_refused():
    with pytest.raises(ValueError, match='adapter_dim must be an integer >= 1'):
        tiny_vit_qpm(adapter_depth=2, adapter_dim=0)
    with pytest.raises(ValueError, match=r'n_features=6 > the backbone\'s 4 feature channels'):
        tiny_vit_qpm(adapter_depth=1, adapter_dim=4)


@pytest.mark.parametrize('row', VARIANTS, ids=lambda row: row.name)
def test_registered_variant_is_built_as_its_table_row(row):
    model = timm.create_model(row.name, device='meta')
    cfg = model.pretrained_cfg
    assert model.backbone_name == row.backbone and model.token_backbone == row.token_backbone
    assert model.num_classes == cfg['num_classes'] == row.num_classes
    assert (model.n_features, model.n_per_class) == (50, 5)
    assert model.adapter_depth == row.adapter_depth
    if row.adapter_depth:
        assert (model.adapter_hidden, model.num_features) == (row.adapter_hidden, row.adapter_dim)
    if not row.token_backbone:
        assert model.feature_info[-1]['reduction'] == (8 if row.reduced_strides else 32)
    assert cfg['input_size'] == (3, row.input_side, row.input_side) and cfg['fixed_input_size'] == row.token_backbone
    maps = model.forward_features(torch.empty(1, *cfg['input_size'], device='meta'))
    assert tuple(maps.shape[-2:]) == cfg['pool_size'] == (row.map_side, row.map_side)
    data = qpm_data_config(variant_dataset(row.name), crop_to_bbox=row.crop_to_bbox)
    assert all(cfg[k] == data[k] for k in ('mean', 'std', 'crop_pct', 'crop_mode', 'interpolation'))
    assert row.backbone in cfg['notes'] and cfg['hf_hub_id'] == row.hub_id and cfg['origin_url'] == row.origin_url
    if row.recipe:  # the recipe file trains this variant on its dataset
        recipe = yaml.safe_load((CONFIGS / row.recipe).read_text())
        assert (recipe['model'], recipe['dataset']) == (row.name, row.dataset)


def test_torchscript_vit_qpm_gives_the_eager_outputs():
    model = tiny_vit_qpm(adapter_depth=1, adapter_dim=16).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))


@pytest.mark.parametrize('backbone, kwargs, size, grid', [
    ('deit_tiny_patch16_224', dict(depth=1), 224, (14, 14)),  # class token
    ('eva02_tiny_patch14_224', dict(depth=1), 224, (16, 16)),  # rotary position embedding
    ('vit_base_patch16_siglip_224', dict(depth=1, embed_dim=64, num_heads=2), 224, (14, 14)),  # no prefix token
    ('swin_tiny_patch4_window7_224', dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)), 224, (7, 7)),
    ('mixer_s16_224', dict(), 224, (14, 14)),  # no forward_features map, only tokens
])
def test_timm_token_models_become_qpm_backbones_with_their_patch_grid(backbone, kwargs, size, grid):
    model = qpm_timm.create_qpm(backbone, head='dense', **SIZES, **kwargs).eval()
    out = model.forward_with_features(torch.randn(1, 3, size, size))
    assert model.token_backbone and out.feature_maps.shape[-2:] == grid
    assert out.feature_maps.shape[1] == model.num_features and model.pretrained_cfg['pool_size'] == grid


def test_features_only_works_for_the_generic_qpm_on_a_cnn_and_on_a_vit():
    cnn = timm.create_model('qpm', backbone='resnet18', features_only=True)
    assert [f.shape[1] for f in cnn(torch.randn(1, 3, 64, 64))] == [64, 64, 128, 256, 512]
    vit = timm.create_model('qpm', backbone='vit_small_patch14_reg4_dinov2', features_only=True, out_indices=(0, 1),
                            **TINY_VIT)
    assert [tuple(f.shape) for f in vit(torch.randn(1, 3, 56, 56))] == [(1, 64, 4, 4)] * 2
    assert vit.pretrained_cfg['input_size'] == (3, 56, 56)

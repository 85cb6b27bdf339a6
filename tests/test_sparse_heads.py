"""Every compact head is a timm model: a baseline's sparse head records its kind in config.json and its export reloads
through ``timm.create_model("local-dir:...")`` with identical logits; the class -> feature table shows signed weights
and the measured count per class; a QPM's Z_A-only solve is every class's top n_wc under its selection."""
import json

import numpy as np
import pytest
import timm
import torch

import qpm_timm
from qpm_timm import hub
from qpm_timm.explain import model_feature_table
from qpm_timm.fit import NO_REDUNDANCY_TAU, problem_from_statistics
from qpm_timm.models import SPARSE_HEADS
from qpm_timm.solver import solve_qpm
from qpm_timm.stats import QPMStatistics

C, K = 4, 5


def _dense():
    torch.manual_seed(0)
    return qpm_timm.create_qpm('test_resnet', num_classes=C, n_features=4, n_per_class=2, head='dense').eval()


def _sparse(kind: str):
    model = _dense()
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(C, K, generator=g) * (torch.rand(C, K, generator=g) > 0.5)
    weight[0, :] = 0  # a class without any weight: a baseline allows it
    mean, std = torch.rand(model.num_features, generator=g), 0.5 + torch.rand(model.num_features, generator=g)
    model.set_sparse_head(kind, torch.tensor([7, 1, 3, 9, 4]), weight, torch.randn(C, generator=g), mean, std)
    return model.eval(), weight


@pytest.mark.parametrize('kind', sorted(SPARSE_HEADS))
def test_a_sparse_heads_export_reloads_through_timm_with_identical_logits(kind, tmp_path):
    model, weight = _sparse(kind)
    hub.save_pretrained(model, tmp_path / kind)
    config = json.loads((tmp_path / kind / 'config.json').read_text())
    assert config['model_args']['head'] == kind and config['model_args']['n_features'] == K
    loaded = timm.create_model(f'local-dir:{tmp_path / kind}', pretrained=True).eval()
    assert loaded.head_kind == kind and loaded.is_qpm
    x = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        out = loaded.forward_with_features(x)
    assert out.feature_maps.shape[1] == K and torch.equal(loaded.class_weights, weight)
    assert torch.equal(loaded.head.fc.bias, model.head.fc.bias)
    card = (tmp_path / kind / 'README.md').read_text()
    assert 'sparse, real-valued linear layer with a bias' in card and 'exactly' not in card.split('##')[0]


def test_sldd_and_qsenn_train_their_mean_and_std_glm_keeps_them_frozen():
    for kind in SPARSE_HEADS:
        model, _ = _sparse(kind)
        trainable = {n for n, p in model.head.named_parameters() if p.requires_grad}
        assert trainable == ({'mean', 'std'} if SPARSE_HEADS[kind].trainable_stats else set())
        assert 'head.fc.weight' in model.state_dict() and not model.head.fc.weight.requires_grad


def test_the_feature_table_shows_signed_weights_and_the_measured_count_per_class():
    model, weight = _sparse('sldd')
    table = model_feature_table(model)
    counts = (weight != 0).sum(1)
    assert f'{float(counts.float().mean()):.2f} per class on average ({int(counts.min())} to {int(counts.max())})' \
        in table
    row = next(line for line in table.splitlines() if line.startswith('| class 1 |'))
    for j in torch.nonzero(weight[1]).flatten().tolist():
        assert f'f{j} (ch {[7, 1, 3, 9, 4][j]}) ({float(weight[1, j]):+.3g})' in row


def test_a_baseline_checkpoint_in_a_qpm_head_model_is_refused_naming_the_head_kind():
    model, _ = _sparse('glm')
    qpm = qpm_timm.create_qpm('test_resnet', num_classes=C, n_features=K, n_per_class=2, head='qpm')
    with pytest.raises(ValueError, match="create it with head='sldd' | 'qsenn' | 'glm'"):
        qpm.load_state_dict(model.state_dict())


def test_a_sparse_head_reading_more_channels_than_the_backbone_has_is_refused():
    model = _dense()
    with pytest.raises(ValueError, match=f"n_features={model.num_features + 1} > the backbone's"):
        model.set_sparse_head('sldd', torch.arange(model.num_features + 1), torch.zeros(C, model.num_features + 1),
                              torch.zeros(C), torch.zeros(model.num_features + 1), torch.ones(model.num_features + 1))


def _statistics(rng, features: int = 10) -> QPMStatistics:
    A = rng.uniform(-0.2, 1.0, (features, C))
    A /= np.abs(A).max()
    ones = np.ones(features)
    return QPMStatistics(A=A, B=rng.uniform(-0.3, 0.3, features), mean=ones, std=ones, locality=ones, edge=ones,
                         class_counts=np.full(C, 10), num_images=10 * C)


def test_the_z_a_only_solve_is_every_classes_top_n_wc_under_the_selection_it_returns():
    statistics = _statistics(np.random.default_rng(0))
    problem, channels = problem_from_statistics(statistics, 4, 2, locality=False, redundancy=False)
    assert problem.tau == NO_REDUNDANCY_TAU and not problem.penalty.any() and not problem.B.any()
    solution = solve_qpm(problem, effort=1, seed=0)
    A = statistics.A[channels][solution.selected]  # (n_f*, C)
    top = np.argsort(-A, axis=0)[:2]
    best = np.zeros_like(solution.assignment)
    for c in range(C):
        best[c, top[:, c]] = True
    rows = {tuple(r) for r in best}
    assert len(rows) == C  # no two classes want the same features here, so uniqueness does not bind
    assert np.array_equal(solution.assignment, best)
    assert solution.objective == pytest.approx(problem.z_a_factor * np.sort(A, axis=0)[-2:].sum())


def test_the_objectives_switches_drop_exactly_their_term():
    statistics = _statistics(np.random.default_rng(1))
    full, _ = problem_from_statistics(statistics, 4, 2)
    no_b, _ = problem_from_statistics(statistics, 4, 2, locality=False)
    no_r, _ = problem_from_statistics(statistics, 4, 2, redundancy=False)
    selected = np.array([0, 2, 5, 7])
    assignment = np.zeros((C, 4), dtype=bool)
    assignment[:, :2] = True
    z_a = full.z_a_factor * float((full.A[selected].T * assignment).sum())
    assert full.objective(selected, assignment) == pytest.approx(z_a + full.z_r(selected) + full.B[selected].sum())
    assert no_b.objective(selected, assignment) == pytest.approx(z_a + full.z_r(selected))
    assert no_r.objective(selected, assignment) == pytest.approx(z_a + full.B[selected].sum())


def test_a_baselines_logit_is_its_bias_plus_its_weighted_contributions_and_the_demo_says_so(tmp_path):
    from qpm_timm.explain import explain_top
    model, weight = _sparse('qsenn')
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    for top in explain_top(model, images, k=C):
        for e in top:
            assert e.features == torch.nonzero(weight[e.class_index]).flatten().tolist()
            assert e.bias + sum(e.contributions) == pytest.approx(e.logit, abs=1e-4)
    pytest.importorskip('gradio')
    from PIL import Image

    from qpm_timm.demo.analysis import analyse, load_demo_model
    from qpm_timm.demo.app import build_app, prediction_text
    hub.save_pretrained(model, tmp_path / 'export')
    demo = load_demo_model(f'local-dir:{tmp_path / "export"}')
    analysis = analyse(demo, Image.new('RGB', (48, 48), (200, 30, 90)))
    assert 'plus its' in prediction_text(demo, analysis) and 'is its bias' in prediction_text(demo, analysis)
    build_app(demo)  # no editing offered (a baseline's layer is not a QPM problem), no error


@pytest.mark.parametrize('kind', ['sldd', 'glm'])
def test_a_baseline_export_goes_to_onnx_within_the_export_tolerance(kind, tmp_path):
    pytest.importorskip('onnxruntime')
    from qpm_timm.export import ATOL, check_onnx
    from qpm_timm.run.exporting import main
    model, _ = _sparse(kind)
    hub.save_pretrained(model, tmp_path / 'export')
    assert main(['onnx', f'local-dir:{tmp_path / "export"}', str(tmp_path / 'm.onnx'), '--img-size', '32',
                 '--with-maps']) == 0
    assert max(check_onnx(model, tmp_path / 'm.onnx', with_maps=True, img_size=32).values()) <= ATOL

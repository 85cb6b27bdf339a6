"""ONNX and torch.export files of a QPM (qpm_timm/export.py; docs/METHOD.md, "Export"): onnxruntime (CPU) gives the
eager outputs within 1e-4 at any batch size, the binary head stays a Gather + MatMul, and bad paths are refused."""
import contextlib
import io
import runpy
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import numpy_helper

import qpm_timm
from qpm_timm import hub
from qpm_timm.export import ATOL, check_onnx, check_pt2, export_onnx, onnx_session
from qpm_timm.models.head import placeholder_assignment
from qpm_timm.run.exporting import main

ROOT = Path(__file__).resolve().parents[1]


def random_head(model, seed=0):
    """A valid QPM head with a random selection, a shuffled binary assignment and random mean/std."""
    g = torch.Generator().manual_seed(seed)
    n = model.n_features
    assignment = placeholder_assignment(model.num_classes, n, model.n_per_class)[:, torch.randperm(n, generator=g)]
    model.set_qpm_head(torch.randperm(model.num_features, generator=g)[:n], assignment,
                       torch.rand(n, generator=g), 0.5 + torch.rand(n, generator=g))
    return model.eval()


def head_graph(path):
    """(Gather indices, binary weight) initialisers of the exported head."""
    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == 'Constant'}
    values.update(constants)
    gathers = [values[n.input[1]] for n in graph.node if n.op_type == 'Gather' and n.input[1] in values]
    products = [values[i] for n in graph.node if n.op_type in ('MatMul', 'Gemm') for i in n.input[:2] if i in values]
    return gathers, products


@pytest.fixture(scope='module')
def resnet50_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = random_head(timm.create_model('qpm_resnet50_cub'))
    path = export_onnx(model, tmp_path_factory.mktemp('r50') / 'qpm_resnet50.onnx', with_maps=True, img_size=64)
    return model, path


def test_resnet50_qpm_onnx_matches_eager_within_1e4_at_batch_1_and_2(resnet50_onnx):
    model, path = resnet50_onnx
    diffs = check_onnx(model, path, with_maps=True, img_size=64)
    assert set(diffs) == {'logits', 'feature_maps'}
    assert max(diffs.values()) <= ATOL, diffs


def test_binary_head_is_exported_as_a_gather_of_the_kept_channels_and_a_binary_matmul(resnet50_onnx):
    model, path = resnet50_onnx
    gathers, products = head_graph(path)
    assert any(np.array_equal(g, model.head.selection.numpy()) for g in gathers)
    W = model.class_weights.numpy()
    assert any(p.shape in (W.shape, W.T.shape) and np.array_equal(p.reshape(W.shape) if p.shape == W.shape else p.T, W)
               for p in products)
    # no dense (C x 2048) classifier anywhere: the head reads n_f* = 50 features
    assert not any(p.ndim == 2 and model.num_features in p.shape for p in products)


def test_vit_qpm_onnx_matches_eager_with_its_patch_grid_maps(tmp_path):
    torch.manual_seed(0)
    model = random_head(qpm_timm.create_qpm('vit_small_patch14_reg4_dinov2', head='dense', num_classes=4, n_features=6,
                                            n_per_class=2, img_size=56, embed_dim=64, depth=2, num_heads=2))
    path = export_onnx(model, tmp_path / 'vit.onnx', with_maps=True)
    diffs = check_onnx(model, path, with_maps=True, batches=(1, 3))
    assert max(diffs.values()) <= ATOL, diffs
    logits, maps = onnx_session(path).run(None, {'images': np.zeros((3, 3, 56, 56), np.float32)})
    assert logits.shape == (3, 4) and maps.shape == (3, 6, 4, 4)


def test_dense_state_exports_its_linear_head_and_all_maps_to_onnx_and_pt2(tmp_path):
    torch.manual_seed(0)
    model = qpm_timm.create_qpm('test_resnet', head='dense', num_classes=5, n_features=6, n_per_class=2).eval()
    path = export_onnx(model, tmp_path / 'dense.onnx', with_maps=True, img_size=32)
    assert max(check_onnx(model, path, with_maps=True, img_size=32).values()) <= ATOL
    _, maps = onnx_session(path).run(None, {'images': np.zeros((2, 3, 32, 32), np.float32)})
    assert maps.shape[1] == model.num_features > model.n_features
    hub.save_pretrained(model, tmp_path / 'export')  # the command line, from an export of the dense state
    assert main(['pt2', f'local-dir:{tmp_path / "export"}', str(tmp_path / 'dense.pt2'), '--img-size', '32']) == 0
    assert check_pt2(model, tmp_path / 'dense.pt2', img_size=32, batches=(1, 5))['logits'] <= ATOL


def test_cli_exports_the_embedded_default_with_maps_and_prints_its_parity(embedded_default, tmp_path, capsys):
    out = tmp_path / 'embedded.onnx'
    assert main(['onnx', f'local-dir:{embedded_default.export}', str(out), '--with-maps']) == 0
    printed = capsys.readouterr().out
    assert 'max |onnx - eager| at batch 1 and 2: logits' in printed and 'feature_maps' in printed
    model = timm.create_model(f'local-dir:{embedded_default.export}', pretrained=True).eval()
    diffs = check_onnx(model, out, with_maps=True, batches=(4,))
    assert max(diffs.values()) <= ATOL, diffs
    x = torch.randn(4, *model.pretrained_cfg['input_size'])  # the export's fixed input side
    logits, maps = onnx_session(out).run(None, {'images': x.numpy()})
    with torch.no_grad():
        eager = model.forward_with_features(x)
    np.testing.assert_allclose(maps, eager.feature_maps.numpy(), atol=ATOL)
    assert (logits.argmax(1) == eager.logits.argmax(1).numpy()).all()
    # the latency benchmark reads that file and prints its ratio line
    ratios = run_benchmark(['--model', f'local-dir:{embedded_default.export}', '--onnx', str(out), '--reps', '1',
                            '--warmup', '0', '--batch-sizes', '1', '2'])
    assert set(ratios) == {1, 2} and all(r > 0 for r in ratios.values())
    assert 'ratio onnxruntime / eager: batch 1' in capsys.readouterr().out


def run_benchmark(argv):
    """benchmarks/onnx_latency.py's ``main(argv)``, run in this process."""
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    try:
        return runpy.run_path(str(ROOT / 'benchmarks' / 'onnx_latency.py'))['main'](argv)
    finally:
        sys.path.remove(str(ROOT / 'benchmarks'))


@pytest.mark.parametrize('argv, message', [
    (['onnx', 'local-dir:/nonexistent/export', '{tmp}/m.onnx'], 'no export there'),
    (['onnx', 'qpm_resnet18_cub', '{tmp}/missing/m.onnx'], 'does not exist'),
    (['onnx', 'qpm_resnet18_cub', '{tmp}/m.pt2'], 'ends in .onnx'),
    (['onnx', 'resnet18_no_such_model', '{tmp}/m.onnx'], 'Unknown model'),
    (['pt2', 'qpm_resnet18_cub', '{tmp}/m.pt2', '--checkpoint', '{tmp}/none.pth'], 'does not exist'),
])
def test_bad_paths_and_names_exit_2_and_write_nothing(tmp_path, argv, message):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and message in err.getvalue()
    assert list(tmp_path.iterdir()) == []

"""The explanation report of a small trained QPM, and explain.py: every file opens, links resolve, class cards and
feature names agree with the model, bad input exits with code 2 without touching an earlier report.

The model: a test_resnet (reduced strides, 8 x 8 maps at 64 px) trained briefly on 6 classes of the concepts
dataset; its statistics and its feature gallery come from one pass (the gallery rides along the statistics), then
the solve and the QPM head, as train.py does.
"""
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import qpm_timm
from helpers.scripts import ROOT, refused, run_script
from qpm_timm import hub
from qpm_timm.conformal import calibrate, predict_sets, set_inputs
from qpm_timm.data import create_qpm_split, get_class_names, qpm_data_config, with_transform
from qpm_timm.data.loader import create_qpm_loader
from qpm_timm.explain import GalleryCollector, class_features, scan_dataset, write_report
from qpm_timm.explain.grounding import ExplanationCollector
from qpm_timm.explain.report import _example_classes
from qpm_timm.forward import forward_pass
from qpm_timm.metrics import concept_recovery
from qpm_timm.solver import QPMProblem, solve_qpm
from qpm_timm.stats import collect_statistics

IMG, CLASSES, FEATURES, PER_CLASS = 64, 6, 6, 2
DATA_ARGS = dict(num_classes=CLASSES, num_concepts=6, images_per_class=8)
SCRIPT_DATA = ['--dataset-args', json.dumps(DATA_ARGS), '--img-size', str(IMG), '--workers', '0', '-b', '16',
               '--no-progress']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp('explain')
    train = create_qpm_split('concepts', None, 'train', is_training=True, transform_size=IMG, **DATA_ARGS)
    val = create_qpm_split('concepts', None, 'val', transform_size=IMG, **DATA_ARGS)
    train_eval = with_transform(train, val.transform)
    torch.manual_seed(0)
    model = qpm_timm.create_qpm('test_resnet', num_classes=CLASSES, n_features=FEATURES, n_per_class=PER_CLASS,
                                head='dense', reduced_strides=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(4):
        for x, y in create_qpm_loader(train, 16, is_training=True):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    collector = GalleryCollector(8)
    stats = collect_statistics(model, create_qpm_loader(train_eval, 16), CLASSES, observers=[collector])
    channels = np.flatnonzero(stats.std > 0)
    solution = solve_qpm(QPMProblem(stats.A[channels], B=stats.B[channels], n_features=FEATURES,
                                    n_per_class=PER_CLASS), time_limit=5, seed=0)
    model.set_qpm_head(torch.as_tensor(channels[solution.selected]), torch.as_tensor(solution.assignment),
                       torch.as_tensor(stats.mean), torch.as_tensor(stats.std))
    model.eval()
    image = root / 'some image.png'
    Image.fromarray(val.images[3]).save(image)
    gallery = collector.gather()
    report = write_report(model, root / 'report', gallery, train_eval, val, get_class_names(val), images=[image])
    hub.save_pretrained(model, root / 'export', label_names=get_class_names(val),
                        data_config=qpm_data_config('concepts', IMG))  # as train.py exports
    scan = scan_dataset(model, val, 16)  # the report's validation pass
    return SimpleNamespace(root=root, model=model, val=val, gallery=gallery, report=report, image=image,
                           report_scan=scan)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids.update([attrs['id']] if 'id' in attrs else [])
        self.links += [attrs[key] for key in ('href', 'src') if key in attrs]


def _check_report_folder(folder: Path):
    files = sorted(p for p in folder.rglob('*') if p.is_file())
    assert files
    for path in files:
        if path.suffix == '.png':
            with Image.open(path) as img:
                img.verify()
        elif path.suffix == '.json':
            json.loads(path.read_text(encoding='utf-8'))
    parser = _Links()
    parser.feed((folder / 'index.html').read_text(encoding='utf-8'))
    assert parser.links
    for link in parser.links:
        if link.startswith('#'):
            assert link[1:] in parser.ids, link
        else:
            assert ':' not in link and not link.startswith('/'), link  # relative: no server, no internet
            assert (folder / link).resolve().is_file() and folder.resolve() in (folder / link).resolve().parents
    return files


def _snapshot(folder: Path):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob('*') if p.is_file()}


def test_every_file_of_the_report_exists_opens_and_every_link_resolves_inside_the_folder(run):
    files = _check_report_folder(run.report.folder)
    names = {str(p.relative_to(run.report.folder)) for p in files}
    assert names == set(run.report.files)
    expected = {'index.html', 'report.json', 'global.png', 'global.json', 'local/some_image.png',
                'local/some_image.json'}
    expected |= {f'features/f{j}.{ext}' for j in range(FEATURES) for ext in ('png', 'json')}
    expected |= {f'classes/c{c}.{ext}' for c in range(CLASSES) for ext in ('png', 'json')}
    assert expected <= names
    summary = json.loads((run.report.folder / 'report.json').read_text(encoding='utf-8'))
    assert {f'pairs/c{a}_vs_c{b}.png' for a, b in summary['pairs']} <= names and summary['pairs']


def test_class_cards_name_exactly_the_features_of_the_assignment(run):
    assignment = class_features(run.model.class_weights)
    for c in range(CLASSES):
        card = json.loads((run.report.folder / f'classes/c{c}.json').read_text(encoding='utf-8'))
        assert [f['feature'] for f in card['features']] == assignment[c]
        assert [f['label'] for f in card['features']] == [run.report.names.labels[j] for j in assignment[c]]
        assert card['class_name'] == run.val.classes[c]


def test_feature_names_are_the_concepts_that_concept_recovery_matches(run):
    x = torch.stack([run.val[i][0] for i in range(len(run.val))])
    with torch.no_grad():
        pooled = run.model.forward_with_features(x).pooled
    matching = concept_recovery(pooled, run.val.concept_presence, run.model.class_weights,
                                run.val.class_concepts).matching
    assert run.report.names.annotation == [run.val.concept_names[k] for k in matching]
    summary = json.loads((run.report.folder / 'report.json').read_text(encoding='utf-8'))
    assert [f['annotation'] for f in summary['features']] == run.report.names.annotation
    assert all(label.startswith(f'f{j} ≈ {name} (r = ') for j, (label, name) in
               enumerate(zip(run.report.names.labels, run.report.names.annotation)))


def test_report_shows_plausibility_grounding_and_deletion_as_the_collector_measures_them(run):
    collector = ExplanationCollector(run.model, run.val, faithfulness=True)
    forward_pass(run.model, create_qpm_loader(run.val, 16), [collector])
    measured = collector.result()
    metrics = json.loads((run.report.folder / 'report.json').read_text(encoding='utf-8'))['explanation_metrics']
    assert metrics['plausibility'] == pytest.approx(measured.plausibility)
    assert metrics['plausibility_chance'] == pytest.approx(measured.plausibility_chance)
    features = metrics['features']
    assert len(features) == FEATURES and sum(f['deletion_images'] for f in features) == PER_CLASS * len(run.val)
    for j, f in enumerate(features):
        assert f['grounding_concept'] == run.val.concept_names[measured.matching[j]]
        for key, value in (('grounding', measured.grounding[j]), ('activation_drop_ratio',
                                                                  measured.deletion.activation_ratio[j]),
                           ('logit_drop_peak', measured.deletion.logit_peak[j])):
            assert (f[key] is None and np.isnan(value)) or f[key] == pytest.approx(value), key
    page = (run.report.folder / 'index.html').read_text(encoding='utf-8')
    assert 'id="metrics"' in page and f'{100 * measured.plausibility:.1f} %' in page


def test_feature_pages_show_the_training_gallery_of_the_selected_channels(run):
    selection = run.model.head.selection.tolist()
    for j, channel in enumerate(selection):
        page = json.loads((run.report.folder / f'features/f{j}.json').read_text(encoding='utf-8'))
        assert page['channel'] == channel
        assert [e['dataset_index'] for e in page['gallery']] == run.gallery.index[channel][:8].tolist()
        for e in page['gallery']:
            top, left, bottom, right = e['box_top_left_bottom_right']
            assert 0 <= top < bottom <= IMG and 0 <= left < right <= IMG


def test_example_images_are_the_class_examples_as_the_model_sees_them(run):
    summary = json.loads((run.report.folder / 'report.json').read_text(encoding='utf-8'))
    assert [e['class_index'] for e in summary['examples']] == list(range(CLASSES))  # 6 classes <= 12: all
    for e in summary['examples']:
        assert e['file'] == f'examples/c{e["class_index"]}.png' and run.val.targets[e['dataset_index']] == \
            e['class_index']
        saved = run.val.transform(Image.open(run.report.folder / e['file']).convert('RGB'))
        assert torch.allclose(saved, run.val[e['dataset_index']][0], atol=0.03)  # 8-bit rounding only
        with torch.no_grad():
            assert int(run.model(saved[None]).argmax()) == e['predicted']
    assert _example_classes([7, None, 3, 4, 9], 2) == [0, 4] and _example_classes([None, 1], 5) == [1]


def test_contrastive_and_local_numbers_add_up_to_the_logits(run):
    summary = json.loads((run.report.folder / 'report.json').read_text(encoding='utf-8'))
    for a, b in summary['pairs']:
        pair = json.loads((run.report.folder / f'pairs/c{a}_vs_c{b}.json').read_text(encoding='utf-8'))
        kinds = [f['kind'] for f in pair['features']]
        assert kinds.count('only A') == 1 and kinds.count('only B') == 1 and kinds.count('shared') == PER_CLASS - 1
        for row in range(2):
            logit_a, logit_b = pair['logits_a_b'][row]
            assert sum(pair['contribution_to_logit_a_minus_b'][row]) == pytest.approx(logit_a - logit_b, abs=1e-4)
    local = json.loads((run.report.folder / 'local/some_image.json').read_text(encoding='utf-8'))
    with torch.no_grad():
        logits = run.model(run.val.transform(Image.open(run.image).convert('RGB'))[None])[0]
    assert [c['class_index'] for c in local['classes']] == logits.argsort(descending=True)[:2].tolist()
    for c in local['classes']:
        assert sum(f['contribution'] for f in c['features']) == pytest.approx(float(logits[c['class_index']]),
                                                                              abs=1e-4)


def test_the_trees_of_an_image_are_its_class_paths_with_its_prediction_set_highlighted(run):
    with torch.no_grad():
        out = run.model.forward_with_features(run.val.transform(Image.open(run.image).convert('RGB'))[None])
    inputs = set_inputs(run.model, out.pooled)
    weights = run.model.class_weights.detach().cpu()
    rows = [set(features) for features in class_features(weights)]
    summary = json.loads((run.report.folder / 'report.json').read_text(encoding='utf-8'))
    calibration = calibrate(set_inputs(run.model, run.report_scan.pooled, run.report_scan.targets), weights, [0.9])
    assert summary['prediction_sets']['threshold'] == calibration.thresholds[0]  # calibrated on the validation pass
    expected_set = np.flatnonzero(predict_sets(calibration, inputs, weights, 0.9)[0]).tolist()
    paths = {}
    for kind in ('global', 'local'):
        tree = json.loads((run.report.folder / f'trees/some_image_{kind}.json').read_text(encoding='utf-8'))
        assert tree['prediction'] == int(out.logits.argmax()) and tree['prediction_set'] == expected_set
        paths[kind] = {int(c): path for c, path in tree['class_paths'].items()}
        for c, path in paths[kind].items():
            assert set(path) == rows[c]  # exactly the class's features, each once
            assert [tree['features'][j] for j in path] == sorted((tree['features'][j] for j in path), reverse=True)
        leaves = {n['class_index']: n['highlight'] for n in tree['nodes'] if n['kind'] == 'class'}
        assert {c for c, lit in leaves.items() if lit} == set(expected_set) & set(leaves)
    first = paths['global'][int(out.logits.argmax())][0]
    assert set(paths['global']) == set(range(CLASSES))  # the global tree: every class; the local one: those
    assert set(paths['local']) == {c for c, path in paths['global'].items() if path[0] == first}  # sharing f1


def test_the_export_card_embeds_the_report_and_the_named_table(run, tmp_path):
    hub.save_pretrained(run.model, tmp_path / 'export', label_names=run.val.classes,
                        feature_names=run.report.names.labels, report_dir=run.report.folder)
    card = (tmp_path / 'export' / 'README.md').read_text(encoding='utf-8')
    assert '(report/global.png)' in card and (tmp_path / 'export' / 'report' / 'global.png').is_file()
    c = 0
    row = ', '.join(run.report.names.labels[j] for j in class_features(run.model.class_weights)[c])
    assert f'| {run.val.classes[c]} | {row} |' in card


@pytest.fixture(scope='module')
def script_report(run):
    out = run.root / 'script_report'
    code = run_script('explain.py', ['--model', f'local-dir:{run.root / "export"}', '--pretrained', *SCRIPT_DATA,
                               '--output', str(out), '--image', str(run.image), '--pair', '0', run.val.classes[1]])
    assert code == 0
    return out


def test_script_explains_a_local_dir_export_with_its_own_gallery_pass(run, script_report):
    files = _check_report_folder(script_report)
    summary = json.loads((script_report / 'report.json').read_text(encoding='utf-8'))
    assert summary['pairs'] == [[0, 1]] and (script_report / 'pairs/c0_vs_c1.png') in files
    assert summary['gallery_source'] == 'training set' and summary['gallery_images_seen'] == CLASSES * 8
    assert [f['label'] for f in summary['features']] == run.report.names.labels  # the same model, the same names


def _bad_inputs(run, out):
    garbage = run.root / 'broken.jpg'
    garbage.write_bytes(b'this is not an image')
    dense = run.root / 'dense'
    if not dense.is_dir():
        hub.save_pretrained(qpm_timm.create_qpm('test_resnet', num_classes=CLASSES, n_features=FEATURES,
                                                n_per_class=PER_CLASS, head='dense', reduced_strides=True), dense)
    blocker = run.root / 'a_file'
    blocker.write_text('x')
    qpm = ['--model', f'local-dir:{run.root / "export"}', '--pretrained']
    return {
        'unreadable image': (qpm + ['--image', str(garbage), '--output', str(out)], 'cannot read image'),
        'missing image': (qpm + ['--image', str(run.root / 'nope.png'), '--output', str(out)], 'does not exist'),
        'class index that does not exist': (qpm + ['--pair', '0', '99', '--output', str(out)],
                                            'class index 99 does not exist'),
        'class name that does not exist': (qpm + ['--pair', '0', 'no such class', '--output', str(out)],
                                           "class 'no such class' does not exist"),
        'dense model': (['--model', f'local-dir:{dense}', '--pretrained', '--output', str(out)], 'needs a QPM'),
        'unwritable output folder': (qpm + ['--output', str(blocker / 'report')], 'cannot write the report folder'),
    }


@pytest.mark.parametrize('case', ['unreadable image', 'missing image', 'class index that does not exist',
                                  'class name that does not exist', 'dense model', 'unwritable output folder'])
def test_bad_input_exits_2_with_a_clear_message_and_keeps_the_earlier_report(run, script_report, capsys, case):
    before = _snapshot(script_report)
    argv, message = _bad_inputs(run, script_report)[case]
    assert run_script('explain.py', argv + SCRIPT_DATA) == 2
    assert message in capsys.readouterr().err
    assert _snapshot(script_report) == before
    assert not [p for p in script_report.parent.iterdir() if p.name.startswith('.script_report')]


def test_script_refuses_a_dense_model_with_exit_code_2(run, script_report):
    _bad_inputs(run, script_report)
    proc = subprocess.run([sys.executable, str(ROOT / 'explain.py'), '--model', f'local-dir:{run.root / "dense"}',
                           '--pretrained', *SCRIPT_DATA, '--output', str(script_report)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and 'needs a QPM' in proc.stderr


def test_script_explains_an_image_with_the_export_alone_names_from_the_export_transform_from_its_config(run,
                                                                                                      tmp_path):
    out = tmp_path / 'alone'
    code = run_script('explain.py', ['--model', f'local-dir:{run.root / "export"}', '--pretrained', '--image',
                                     run.image, '--pair', run.val.classes[0], '1', '--output', out, '--workers', '0',
                                     '--no-progress'])
    assert code == 0
    files = {str(p.relative_to(out)) for p in _check_report_folder(out)}
    assert files == {'index.html', 'report.json', 'global.png', 'global.json', 'local/some_image.png',
                     'local/some_image.json', 'pairs/c0_vs_c1.png', 'pairs/c0_vs_c1.json',  # no gallery, no card
                     *(f'trees/some_image_{kind}.{ext}' for kind in ('local', 'global') for ext in ('png', 'json'))}
    summary = json.loads((out / 'report.json').read_text(encoding='utf-8'))
    assert not summary['prediction_sets']['calibrated']  # no dataset and no exported calibration: the prediction only
    assert summary['class_names'] == run.val.classes and not summary['dataset_given']
    assert summary['validation_accuracy'] is None and summary['gallery_source'] is None
    assert 'No dataset was given' in (out / 'index.html').read_text(encoding='utf-8')
    # the export's data config is the dataset's eval transform: the same prediction and contributions
    alone, with_data = (json.loads((folder / 'local/some_image.json').read_text(encoding='utf-8'))['classes']
                        for folder in (out, run.report.folder))
    for got, expected in zip(alone, with_data):
        assert got['class_index'] == expected['class_index'] and got['logit'] == pytest.approx(expected['logit'])
        assert [f['contribution'] for f in got['features']] == pytest.approx(
            [f['contribution'] for f in expected['features']])
    pair = json.loads((out / 'pairs/c0_vs_c1.json').read_text(encoding='utf-8'))
    with Image.open(run.image) as img, torch.no_grad():
        logits = run.model(run.val.transform(img.convert('RGB'))[None])[0]
    assert pair['images'] == [run.image.name]  # the pair drawn on the image: its logits of A and B
    assert pair['logits_a_b'][0] == pytest.approx(logits[[0, 1]].tolist(), abs=1e-5)
    code, err = refused('explain.py', ['--model', f'local-dir:{run.root / "export"}', '--pretrained', '--gallery',
                                       run.root / 'gallery.npz', '--output', out])
    assert code == 2 and '--gallery indexes the training images of a dataset' in err


@pytest.mark.parametrize('cpus, jobs, workers', [(1, 40, None), (2, 3, None), (2, 40, 2), (8, 40, 8), (16, 40, 10),
                                                 (4, 6, 1)])
def test_the_report_draws_with_one_process_per_available_cpu_and_four_pictures_each(monkeypatch, cpus, jobs, workers):
    from qpm_timm.explain import drawing
    started = []

    class FakePool:
        def __init__(self, processes, initializer=None, initargs=()):
            started.append(processes)

        def map_async(self, fn, items, chunksize=1):
            return SimpleNamespace(get=lambda: [])

        def close(self):
            pass

    monkeypatch.setattr(drawing.os, 'sched_getaffinity', lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(drawing.multiprocessing, 'get_context', lambda method: SimpleNamespace(Pool=FakePool))
    pending = drawing.draw_in_workers(print, [('global', None)] * jobs)
    assert (pending is None) is (workers is None) and started == ([] if workers is None else [workers])


def test_the_drawing_workers_get_the_drawing_function_through_the_fork_not_pickled(monkeypatch):
    """A closure cannot be pickled: the workers inherit it (the pool's initargs), only jobs and results travel."""
    from qpm_timm.explain import drawing
    if 'fork' not in drawing.multiprocessing.get_all_start_methods():
        pytest.skip('no fork on this platform')
    monkeypatch.setattr(drawing, 'available_cpus', lambda: 2)
    offset = 10
    pending = drawing.draw_in_workers(lambda job: (job + offset, drawing._draw is not None), list(range(8)))
    assert pending.get() == [(j + 10, True) for j in range(8)] and drawing._draw is None

"""The Gradio demo of the embedded default, driven as a user does: ``export-space`` writes a Hugging Face Space folder,
its ``app.py`` runs unchanged in its own process on 127.0.0.1 (the Space's own copy of qpm_timm, no network), and
``gradio_client`` sends it images: the predicted class, its named features, heatmaps and the nearest class come back,
and a broken file gives a readable error, not a traceback. One app for the whole module (Gradio starts slowly).
"""
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

gradio_client = pytest.importorskip('gradio_client')  # the demo extra: pip install -e ".[demo]"
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from qpm_timm.conformal import load_calibration, predict_sets, set_inputs  # noqa: E402
from qpm_timm.demo.__main__ import main  # noqa: E402
from qpm_timm.demo.analysis import analyse, load_demo_model, read_image  # noqa: E402
from qpm_timm.explain import feature_names  # noqa: E402
from qpm_timm.run.cli import UsageError  # noqa: E402

MENU, EDIT_TEXT = 11, 12  # after the 11 outputs of /explain (the last two: prediction set, tree)
START_TIMEOUT = 120  # seconds for the Space's app to import torch, timm, Gradio and load the model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _wait_for_client(url: str, proc: subprocess.Popen, log: Path) -> Client:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f'the Space app exited with {proc.returncode}:\n{log.read_text()[-3000:]}')
        try:
            return Client(url, verbose=False, download_files=False)
        except Exception:  # noqa: BLE001  not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f'the Space app did not answer within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}')
            time.sleep(0.5)


@pytest.fixture(scope='module')
def space(embedded_default, tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    folder = root / 'space'
    assert main(['export-space', str(embedded_default.export), str(folder)]) == 0
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'GRADIO_SERVER_NAME', 'GRADIO_SERVER_PORT')}
    env.update(GRADIO_SERVER_NAME='127.0.0.1', GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1',
               GRADIO_TEMP_DIR=str(root / 'gradio'))
    log = root / 'app.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen([sys.executable, 'app.py'], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = _wait_for_client(f'http://127.0.0.1:{port}/', proc, log)
        report = json.loads((embedded_default.export / 'report' / 'report.json').read_text(encoding='utf-8'))
        yield SimpleNamespace(folder=folder, client=client, report=report, root=root, log=log,
                              export=embedded_default.export)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _explain(space, path: Path):
    return space.client.predict(handle_file(str(path)), api_name='/explain')


def _example(space) -> dict:
    """A report example the model classifies correctly."""
    return next(e for e in space.report['examples'] if e['predicted'] == e['class_index'])


def _markdown_rows(text: str) -> list:
    """The body rows of the first Markdown table in ``text``, as lists of cells."""
    rows = [line.strip('|').split(' | ') for line in text.splitlines() if line.startswith('| ')]
    return [[cell.strip() for cell in row] for row in rows[1:]]


def test_export_space_writes_a_gradio_space_with_its_own_qpm_timm_and_the_export(space):
    front, card = space.folder.joinpath('README.md').read_text(encoding='utf-8').split('---\n')[1:3]
    front = yaml.safe_load(front)
    assert front['sdk'] == 'gradio' and front['app_file'] == 'app.py'
    assert front['sdk_version'] == importlib.metadata.version('gradio')
    requirements = space.folder.joinpath('requirements.txt').read_text().split()
    assert any(r.startswith('torch') for r in requirements) and any(r.startswith('timm') for r in requirements)
    assert (space.folder / 'qpm_timm' / 'demo' / 'app.py').is_file()
    for name in ('model.safetensors', 'config.json', 'report/report.json'):
        assert (space.folder / 'model' / 'export' / name).read_bytes() == (space.export / name).read_bytes()
    statistics = space.export.parent / 'statistics.npz'  # what the edit action re-solves on
    assert (space.folder / 'model' / 'statistics.npz').read_bytes() == statistics.read_bytes()
    assert 'Running on local URL' in space.log.read_text()  # the app of the folder, in its own process


def test_an_example_image_gives_its_class_features_heatmaps_and_nearest_class(space):
    example = _example(space)
    c = example['class_index']
    scores, summary, seen, heat, table, card, galleries, contrast, contrast_pictures, set_text, tree, menu = \
        _explain(space, space.export / 'report' / example['file'])
    names = space.report['class_names']
    assert scores['label'] == names[c]
    confidences = [x['confidence'] for x in scores['confidences']]
    assert len(confidences) == 5 and confidences == sorted(confidences, reverse=True) and confidences[0] > 0.5
    labels = [space.report['features'][j]['label'] for j in space.report['class_features'][c]]
    assert sorted(row[0] for row in table['data']) == sorted(labels)
    assert sum(row[1] for row in table['data']) == pytest.approx(float(summary.split('logit ')[1].split()[0]), abs=0.02)
    assert [item['caption'].split(':')[0] for item in heat] == labels
    pixels = [Image.open(item['image']['path']) for item in heat]
    assert len({p.tobytes() for p in pixels}) == len(labels)  # every feature fired somewhere else
    assert card['path'].endswith(f'c{c}.png') and len(galleries) == len(labels)
    nearest = contrast.split('### Nearest class: ')[1].split('\n')[0]
    other = names.index(nearest)
    shared = set(space.report['class_features'][c]) & set(space.report['class_features'][other])
    assert len(shared) == len(labels) - 1  # the embedded default has contrastive pairs: all but one feature shared
    assert len(contrast_pictures) >= 2
    demo = load_demo_model(f'local-dir:{space.export}', pretrained=True)
    model, calibration = demo.model, load_calibration(demo.model)  # train.py exports the sets' calibration
    image = demo.transform(read_image(space.export / 'report' / example['file']))
    with torch.no_grad():
        pooled = model.forward_with_features(image[None]).pooled
    target = min(calibration.targets, key=lambda t: abs(t - 0.9))
    members = predict_sets(calibration, set_inputs(model, pooled), model.class_weights.detach().cpu(), target)[0]
    listed = set_text.split('\n\n')[1].split(', ')
    assert sorted(listed) == sorted(names[k] for k in np.flatnonzero(members)) and names[c] in listed
    assert f'coverage {target:g}' in set_text and Image.open(tree['path']).size[0] > 100


def test_switching_a_feature_off_re_solves_and_changes_the_table(space):
    image = handle_file(str(space.export / 'report' / _example(space)['file']))
    before = space.client.predict(image, api_name='/explain')
    channel = before[-1]['value']  # the edit menu offers the prediction's strongest feature
    label = {value: name for name, value in before[-1]['choices']}[channel]
    with pytest.raises(AppError, match='Pick a feature'):
        space.client.predict(image, None, api_name='/switch_off')
    assert 'Prediction before' not in space.client.predict(None, channel, api_name='/switch_off')[EDIT_TEXT]
    space.client.predict(None, api_name='/undo')
    after = space.client.predict(image, channel, api_name='/switch_off')  # the same edit: kept, not solved again
    table, set_text, menu, text = after[4], after[9], after[MENU], after[EDIT_TEXT]
    assert label in text.split('\n')[0] and 'Prediction before' in text
    assert label not in [row[0] for row in table['data']] and 'undo the edits' in set_text  # not its calibration
    assert label not in [name for name, _ in menu['choices']]
    j = [f['label'] for f in space.report['features']].index(label)
    users = {space.report['class_names'][c] for c, feats in enumerate(space.report['class_features']) if j in feats}
    rows = _markdown_rows(text)
    assert users <= {row[0] for row in rows}  # every class that used the feature changed
    assert all(label not in row[2] for row in rows) and all(label in row[1] for row in rows if row[0] in users)
    again = space.client.predict(image, api_name='/explain')  # the session keeps its edited model
    assert again[4]['data'] == table['data']
    undone = space.client.predict(image, api_name='/undo')
    assert undone[4]['data'] == before[4]['data'] and undone[EDIT_TEXT] == ''


def test_a_broken_image_is_a_readable_error_in_the_page(space, tmp_path):
    broken = tmp_path / 'holiday.jpg'
    broken.write_bytes(b'this is not a JPEG file')
    with pytest.raises(AppError) as error:
        _explain(space, broken)
    message = str(error.value)
    assert 'cannot read image holiday.jpg' in message and 'give an image file' in message
    assert 'Traceback' not in message and str(tmp_path) not in message
    with pytest.raises(AppError, match='Upload an image or pick an example image first'):
        space.client.predict(None, api_name='/explain')


def test_without_a_report_or_its_heatmap_scale_the_demo_falls_back_and_a_foreign_report_is_refused(space, tmp_path):
    example = _example(space)
    bare = tmp_path / 'bare'
    shutil.copytree(space.export, bare, ignore=shutil.ignore_patterns('report'))
    demo = load_demo_model(f'local-dir:{bare}', pretrained=True)
    selection = demo.model.head.selection.tolist()
    assert demo.report.labels == feature_names(selection) and not demo.report.examples
    analysis = analyse(demo, read_image(space.export / 'report' / example['file']))
    assert analysis.predicted == example['class_index'] and not any(analysis.view.galleries)
    alone = tmp_path / 'alone'  # a report of the model alone (no validation pass): no heatmap scale
    shutil.copytree(space.export, alone)
    summary = json.loads((alone / 'report' / 'report.json').read_text(encoding='utf-8'))
    summary['features'] = [dict(f, typical_active_value=None) for f in summary['features']]
    (alone / 'report' / 'report.json').write_text(json.dumps(summary), encoding='utf-8')
    demo = load_demo_model(f'local-dir:{alone}', pretrained=True)
    assert demo.report.active is None and demo.report.labels == [f['label'] for f in summary['features']]
    assert analyse(demo, read_image(space.export / 'report' / example['file'])).predicted == example['class_index']
    foreign = tmp_path / 'foreign'
    shutil.copytree(space.export, foreign)
    summary = json.loads((foreign / 'report' / 'report.json').read_text(encoding='utf-8'))
    summary['selection'] = summary['selection'][::-1]
    (foreign / 'report' / 'report.json').write_text(json.dumps(summary), encoding='utf-8')
    with pytest.raises(UsageError, match='describes another model'):
        load_demo_model(f'local-dir:{foreign}', pretrained=True)


_HUB_DEMO = """
import json
from huggingface_hub import constants
from qpm_timm.demo.analysis import analyse, load_demo_model, read_image
from qpm_timm.demo.editing import find_edit_source

def seen():
    demo = load_demo_model('hf-hub:qpm-timm/demo', pretrained=True)
    analysis = analyse(demo, read_image(demo.report.examples[0][0]))
    return dict(labels=demo.report.labels, examples=[caption for _, caption in demo.report.examples],
                top=analysis.top, editable=find_edit_source(demo) is not None)

online = seen()
constants.HF_HUB_OFFLINE = True  # as HF_HUB_OFFLINE=1 does: the cache only
print(json.dumps([online, seen()]))
"""


def test_an_hf_hub_model_brings_its_report_and_statistics_and_runs_offline_from_the_cache(space, hub_server, tmp_path):
    repo = tmp_path / 'repo'
    shutil.copytree(space.folder / 'model' / 'export', repo)
    shutil.copy2(space.folder / 'model' / 'statistics.npz', repo)
    hub_server.add_repo('qpm-timm/demo', repo)
    online, offline = json.loads(hub_server.run_python(_HUB_DEMO, tmp_path / 'hf'))
    assert online['labels'] == [f['label'] for f in space.report['features']] and online['editable']
    assert online['examples'] == [e['class_name'] for e in space.report['examples']]
    assert offline == online


def test_export_space_of_a_hub_repository_references_it_instead_of_copying_weights(tmp_path):
    assert main(['export-space', '--hub-id', 'qpm-timm/demo', str(tmp_path / 'space')]) == 0
    assert "MODEL = 'hf-hub:qpm-timm/demo'" in (tmp_path / 'space' / 'app.py').read_text()
    assert not (tmp_path / 'space' / 'model').exists() and (tmp_path / 'space' / 'qpm_timm' / 'demo').is_dir()


def test_bad_command_lines_exit_2_and_write_nothing(tmp_path, capsys):
    assert main(['--model', f'local-dir:{tmp_path / "missing"}', '--pretrained']) == 2
    assert main(['export-space', str(tmp_path), str(tmp_path / 'space')]) == 2
    assert main(['export-space', str(tmp_path), str(tmp_path / 'space'), '--hub-id', 'qpm-timm/demo']) == 2
    assert not (tmp_path / 'space').exists()
    assert 'no export folder' in capsys.readouterr().err


def test_an_edit_that_keeps_the_assignment_over_another_channel_has_no_calibrated_set():
    """A re-solve can give a switched-off feature's classes to its replacement: the same binary W over other
    channels, which the calibration (made for the exported channels) does not fit."""
    from qpm_timm import create_qpm
    from qpm_timm.demo.sets import prediction_set
    from qpm_timm.models.assignment import assignment_digest
    from qpm_timm.models.head import placeholder_assignment
    torch.manual_seed(0)
    exported = create_qpm('test_resnet', num_classes=4, n_features=4, n_per_class=2, head='dense')
    assignment = placeholder_assignment(4, 4, 2)
    exported.set_qpm_head(torch.arange(4), assignment, torch.zeros(4), torch.ones(4))
    edited = create_qpm('test_resnet', num_classes=4, n_features=4, n_per_class=2, head='dense')
    edited.set_qpm_head(torch.tensor([0, 1, 2, 5]), assignment, torch.zeros(4), torch.ones(4))
    sets = SimpleNamespace(model=exported, calibration=SimpleNamespace(
        assignment=assignment_digest(exported.class_weights.detach())))
    assert torch.equal(edited.class_weights, exported.class_weights)
    assert prediction_set(sets, None, None, edited) is None

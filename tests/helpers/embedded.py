"""``embedded_default``: the README's main command (``python train.py -c qpm_timm/configs/concepts.yaml``), run once
per test session and shared by every pytest-xdist worker, so that each test that needs a really trained model (the
README's claims, prediction sets, editing, export, explanation metrics) reads the same experiment folder instead of
training its own.

The first worker to ask runs the command under a file lock in the session's shared temporary folder; the others
wait for it and read the same folder (or the same failure). ``QPM_TEST_EMBEDDED_DEFAULT=<experiment folder>`` reuses a
folder made by that command earlier (while developing; CI does not set it).
"""
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[2]


# The README's main command (its first set-up line; tests/test_readme.py checks that the README shows exactly this).
MAIN_COMMAND = ['train.py', '-c', 'qpm_timm/configs/concepts.yaml']


@dataclass
class EmbeddedRun:
    """The experiment folder of the run, its ``results.json`` and its printed output."""
    folder: Path
    results: dict
    stdout: str

    @property
    def export(self) -> Path:
        return self.folder / 'export'


def _run(output: Path) -> dict:
    proc = subprocess.run([sys.executable, *MAIN_COMMAND, '--output', str(output), '--no-progress'],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    folders = [str(p.parent) for p in output.glob('*/results.json')]
    return dict(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr[-3000:],
                folder=folders[0] if len(folders) == 1 else None)


@pytest.fixture(scope='session')
def embedded_default(tmp_path_factory) -> EmbeddedRun:
    reused = os.environ.get('QPM_TEST_EMBEDDED_DEFAULT')
    if reused:
        folder = Path(reused)
        return EmbeddedRun(folder, json.loads((folder / 'results.json').read_text()), '')
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        shared = shared.parent  # the folder every worker's temporary folder lives in
    record = shared / 'embedded_default.json'
    with FileLock(str(shared / 'embedded_default.lock')):
        if not record.is_file():
            record.write_text(json.dumps(_run(shared / 'embedded_default')))
    run = json.loads(record.read_text())
    assert run['returncode'] == 0 and run['folder'], f'the README main command failed:\n{run["stderr"]}'
    folder = Path(run['folder'])
    return EmbeddedRun(folder, json.loads((folder / 'results.json').read_text()), run['stdout'])

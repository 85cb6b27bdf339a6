"""Shared pytest fixtures: ``hub_server``, a local Hugging Face Hub (see tests/helpers/hub_server.py), and
``embedded_default``, the README's main command run once per test session (see :mod:`helpers.embedded`).

Under pytest-xdist (``-n auto`` in setup.cfg) every worker process, and every script a test starts, uses one
torch thread: the workers already keep every core busy, and more threads than cores only slow them down.
"""
import os

import torch

from helpers.embedded import embedded_default  # noqa: F401  (pytest fixture)
from helpers.hub_server import hub_server  # noqa: F401  (pytest fixture)

if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)

# The order pytest-xdist hands the files to the workers (--dist loadfile --no-loadscope-reorder in setup.cfg), by a
# rule on what the files do, not a list of their names: the first file (by name) that runs end to end and reads the
# embedded default starts that run at once; the other end-to-end files (``pytestmark = pytest.mark.end_to_end``:
# they run scripts, trainings or solves) follow while it trains, then the quick files; the files that read the
# embedded default come last, when it is ready, so that no worker waits for it while other files are left.
def pytest_collection_modifyitems(items):
    files = {}
    for item in items:
        end_to_end, reads = files.get(item.path, (False, False))
        files[item.path] = (end_to_end or item.get_closest_marker('end_to_end') is not None,
                            reads or 'embedded_default' in item.fixturenames)
    starter = next((path for path in sorted(files) if all(files[path])), None)

    def rank(item) -> int:
        end_to_end, reads = files[item.path]
        return 0 if item.path == starter else 3 if reads else 1 if end_to_end else 2
    items.sort(key=lambda item: (rank(item), str(item.path)))  # stable: a file's tests keep their order

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

# The longest test files first (pytest-xdist hands files to the workers in this order, --no-loadscope-reorder in
# setup.cfg), so the long end-to-end runs start at once and the short files fill in around them; the files that read
# the embedded default's run (the ``embedded_default`` fixture, trained by the worker that runs test_readme.py) come
# last, so that no worker waits for that run while other files are left.
LONGEST_FIRST = ('test_readme.py', 'test_train.py', 'test_benchmarks.py', 'test_recipes.py', 'test_pretrained.py',
                 'test_train_vit.py', 'test_hub_push.py', 'test_solver.py', 'test_explain.py', 'test_hub_download.py')
EMBEDDED_LAST = ('test_chiqpm_train.py', 'test_demo.py', 'test_export.py', 'test_edit.py', 'test_prediction_sets.py')


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    last = {name: len(rank) + 1 + i for i, name in enumerate(EMBEDDED_LAST)}
    items.sort(key=lambda item: last.get(item.path.name, rank.get(item.path.name, len(rank))))

"""Shared pytest fixtures: ``hub_server``, a local Hugging Face Hub (see tests/hub_server.py).

Under pytest-xdist (``-n auto`` in setup.cfg) every worker process, and every script a test starts, uses one
torch thread: the workers already keep every core busy, and more threads than cores only slow them down.
"""
import os

import torch

from hub_server import hub_server  # noqa: F401  (pytest fixture)

if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)

"""Shared pytest fixtures: ``hub_server``, a local Hugging Face Hub (see tests/hub_server.py)."""
from hub_server import hub_server  # noqa: F401  (pytest fixture)

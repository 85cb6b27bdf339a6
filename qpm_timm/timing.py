"""Where a run's wall time goes: seconds per stage, summed over this process (train.py writes them into
``results.json`` as ``timings``; ``benchmarks/first_hour.py`` prints them).

Stages nest: ``with timed('dense'): ...`` adds the block's seconds to ``'dense'``, and time a loader of
:func:`~qpm_timm.data.create_qpm_loader` spends producing batches inside it is also added to
``'dense.loading'`` (``'loading'`` outside any stage), so the compute of a stage is its time minus its loading.
Only measured, never read back: no result depends on these numbers.
"""
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, List

__all__ = ['timed', 'add_loading_time', 'stage_seconds', 'reset_timings']

_SECONDS: Dict[str, float] = defaultdict(float)
_STACK: List[str] = []


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Add the block's wall seconds to ``stage`` (and make it the stage that loaders charge their time to)."""
    _STACK.append(stage)
    start = time.perf_counter()
    try:
        yield
    finally:
        _SECONDS[stage] += time.perf_counter() - start
        _STACK.pop()


def add_loading_time(seconds: float) -> None:
    """Seconds a loader spent producing batches, charged to the innermost running stage."""
    _SECONDS[f'{_STACK[-1]}.loading' if _STACK else 'loading'] += seconds


def stage_seconds() -> Dict[str, float]:
    """Seconds per stage so far, rounded to 10 ms."""
    return {k: round(v, 2) for k, v in _SECONDS.items()}


def reset_timings() -> None:
    """Start counting anew (a run started in a process that ran one before)."""
    _SECONDS.clear()

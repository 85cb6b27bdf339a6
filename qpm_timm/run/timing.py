"""Where a run's wall time goes: seconds per stage, summed over this process (train.py writes them into
``results.json`` as ``timings``; ``benchmarks/first_hour.py`` prints them). The run layer's own instrument: the
library below it knows nothing of it.

Stages nest: ``with timed('dense'): ...`` adds the block's seconds to ``'dense'``, and time a :class:`TimedLoader`
(``create_qpm_loader(..., loader_class=TimedLoader)``) spends producing batches inside it is also added to
``'dense.loading'`` (``'loading'`` outside any stage), so the compute of a stage is its time minus its loading;
:func:`add_seconds` records a time measured elsewhere (the solve's own wall time). Only measured, never read back: no
result depends on these numbers.
"""
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, List

from torch.utils.data import DataLoader

__all__ = ['timed', 'add_loading_time', 'add_seconds', 'stage_seconds', 'reset_timings', 'TimedLoader']

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


def add_seconds(stage: str, seconds: float) -> None:
    """Add ``seconds`` measured elsewhere to ``stage``."""
    _SECONDS[stage] += seconds


class TimedLoader(DataLoader):
    """A DataLoader that reports the seconds it spends producing batches (:func:`add_loading_time`)."""

    def __iter__(self):
        it = super().__iter__()
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                add_loading_time(time.perf_counter() - start)
            yield batch

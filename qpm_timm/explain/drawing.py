""" Drawing pictures in forked worker processes while the caller runs the model (the report's pictures).

Matplotlib draws on one core, so a pool of forked processes divides the drawing time by about the number of CPUs.
The rule (docs/TRAINING.md, "Precision and speed"): one process per CPU this process may run on
(``os.sched_getaffinity``), and no more than one per 4 jobs, so that every fork has work to pay for itself; none with
one CPU or where forking is unavailable (the caller draws then). The pictures are the same either way. A worker gets
the drawing function through the fork (the pool's ``initargs``, never pickled: it may hold a model and datasets);
only the jobs and their results travel through the pool's queues.
"""
import multiprocessing
import os
from typing import Any, Callable, List, Optional, Sequence

import torch

__all__ = ['JOBS_PER_WORKER', 'available_cpus', 'drawing_workers', 'draw_in_workers', 'Drawing']

JOBS_PER_WORKER = 4  # at least this many pictures per drawing process
_draw: Optional[Callable[[Any], Any]] = None  # a worker's drawing function, set once by its initializer, in it only


def available_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def drawing_workers(jobs: int, cpus: int) -> int:
    """Worker processes for ``jobs`` pictures on ``cpus`` CPUs: one per CPU, at most one per 4 jobs, 0 with one CPU."""
    return min(cpus, jobs // JOBS_PER_WORKER) if cpus >= 2 else 0


def _start_worker(draw: Callable[[Any], Any]) -> None:
    global _draw
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool (as DataLoader workers do)
    _draw = draw


def _draw_job(job) -> Any:
    return _draw(job)


class Drawing:
    """The pictures the worker processes draw; ``get`` waits for them (in job order) and ends the pool."""

    def __init__(self, pool, result):
        self.pool, self.result, self.running = pool, result, True

    def get(self) -> List[Any]:
        try:
            return self.result.get()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.pool.terminate()
            self.pool.join()


def draw_in_workers(draw: Callable[[Any], Any], jobs: Sequence) -> Optional[Drawing]:
    """Start ``draw(job)`` of every job in forked worker processes (module docstring) and return the pending
    :class:`Drawing`, or None where the rule gives no worker (then the caller draws them itself)."""
    workers = drawing_workers(len(jobs), available_cpus())
    if workers < 1 or 'fork' not in multiprocessing.get_all_start_methods():
        return None
    pool = multiprocessing.get_context('fork').Pool(workers, initializer=_start_worker, initargs=(draw,))
    result = pool.map_async(_draw_job, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    pool.close()
    return Drawing(pool, result)

"""Helpers shared by the benchmark scripts: a solved-looking QPM head, equal backbones, alternating timing."""
import os
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

from qpm_timm.models.head import placeholder_assignment


def setup(args) -> Tuple[torch.device, torch.Generator]:
    """Apply ``--threads``, seed torch from ``--seed``; the device and a generator for the inputs."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return torch.device(args.device), torch.Generator().manual_seed(args.seed)


def solved_looking_head(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give a QPM model a random but valid head: distinct selection, binary assignment, random mean/std."""
    n_f, n_wc, c = model.n_features, model.n_per_class, model.num_classes
    selection = torch.randperm(model.num_features, generator=generator)[:n_f]
    assignment = placeholder_assignment(c, n_f, n_wc)[:, torch.randperm(n_f, generator=generator)].bool()
    mean = torch.rand(n_f, generator=generator)
    std = 0.5 + torch.rand(n_f, generator=generator)
    model.set_qpm_head(selection, assignment, mean, std)


def copy_backbone(qpm_model: torch.nn.Module, plain: torch.nn.Module) -> None:
    """Load the plain timm model's weights (all but its classifier) into the QPM backbone, strictly."""
    classifier = plain.default_cfg['classifier']
    state = {k: v for k, v in plain.state_dict().items() if not k.startswith(classifier + '.')}
    qpm_model.backbone.load_state_dict(state, strict=True)


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Seconds one call takes (synchronising CUDA around it)."""
    def run(fn: Callable[[], object]) -> float:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    return run


def alternate(fns: Dict[str, Callable[[int], object]], reps: int, warmup: int, time_fn) -> Dict[str, List[float]]:
    """Run every function in turn (A, B, A, B, ...) on round ``i``, ``warmup`` untimed rounds first; seconds."""
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    times = {name: [] for name in fns}
    for i in range(reps):
        for name, fn in fns.items():
            times[name].append(time_fn(lambda: fn(warmup + i)))
    return times


def load_text() -> str:
    try:
        return 'load average %.2f %.2f %.2f' % os.getloadavg()
    except OSError:
        return 'load average n/a'


def row(name: str, ts: List[float], width: int = 44) -> str:
    return (f'{name:<{width}} {1e3 * statistics.median(ts):>10.1f} {1e3 * min(ts):>9.1f} {1e3 * max(ts):>9.1f} '
            f'{len(ts):>5}')

"""One precision policy for every pass over data: training, statistics, feature cache, validation, explanations.

``--amp`` has three states (the scripts' flag and the configs' ``amp`` key):

* ``auto`` (the default): bfloat16 autocast where the device runs bfloat16 natively, float32 elsewhere;
* ``--amp`` (``amp: true``): bfloat16 autocast whatever the device;
* ``--no-amp`` (``amp: false``): float32.

The rule of ``auto`` (:func:`resolve_precision`, docs/TRAINING.md "Precision and speed"), from what torch reports:

* CUDA: ``torch.cuda.is_bf16_supported()`` and compute capability >= 8.0 (Ampere and newer have bf16 tensor cores;
  older GPUs emulate it);
* x86 CPU: AVX512-BF16 or AMX tiles (``torch.cpu._is_avx512_bf16_supported()``, ``torch.cpu._is_amx_tile_supported()``),
  the instructions oneDNN's native bf16 kernels need, and oneDNN not capped below them by its documented
  ``ONEDNN_MAX_CPU_ISA`` (``DNNL_MAX_CPU_ISA``): with ``ONEDNN_MAX_CPU_ISA=AVX2`` a machine with bf16 units behaves
  as one without (oneDNN emulates bf16 there, several times slower than float32);
* Arm CPU: the BF16 extension (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, which on Arm reads it);
* any other device: float32.

A run resolves it once (:func:`resolve_precision`), prints :meth:`Precision.describe` once and records the
resolved value (``args.yaml``, ``results.json``, the export's card), so a resumed run keeps the precision it
started with. ``torch.autocast`` left to its default would pick float16 on CUDA and bfloat16 on the CPU, so the
statistics the solver sees would be computed in another precision than training and validation; every pass
therefore enters :func:`autocast`, never ``torch.autocast`` directly (docs/METHOD.md, "Pipeline").
"""
import os
import platform
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import ContextManager, Dict, Optional, Tuple, Union

import torch

__all__ = ['AMP_DTYPE', 'AUTO', 'Precision', 'autocast', 'parse_amp', 'resolve_precision', 'to_device',
           'cpu_bf16_native', 'cuda_bf16_native', 'onednn_isa_cap']

AMP_DTYPE = torch.bfloat16
AUTO = 'auto'

# oneDNN's ONEDNN_MAX_CPU_ISA values (its "CPU dispatcher control" page) below the first ISA with native bf16
# instructions (AVX512_CORE_BF16); every other documented value (AVX512_CORE_BF16, AVX512_CORE_FP16, AVX512_CORE_AMX,
# AVX10_*, ALL, DEFAULT) leaves bf16 to the hardware.
_ISA_WITHOUT_BF16 = ('SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX512_CORE', 'AVX512_CORE_VNNI')


@dataclass(frozen=True)
class Precision:
    """The precision of a run: bfloat16 autocast (``amp``) or float32, on what device, and why."""
    amp: bool
    requested: str     # 'auto', 'on' (--amp) or 'off' (--no-amp)
    device: str        # 'cpu', 'cuda', ...
    hardware: str      # what the device reports, e.g. 'AMD EPYC, AVX2, no native bf16'
    reason: str

    @property
    def name(self) -> str:
        return 'bfloat16' if self.amp else 'float32'

    def describe(self) -> str:
        """The one line a run prints: device, capability, chosen precision and why."""
        return f'precision: {self.name} ({self.reason}; --amp {self.requested}; {self.device}: {self.hardware})'

    def as_dict(self) -> Dict[str, object]:
        """For results.json and the export's card."""
        return dict(asdict(self), name=self.name)


def parse_amp(value: Union[str, bool, None]) -> Union[str, bool]:
    """``amp`` of a config or a saved ``args.yaml``: ``auto``, ``true`` or ``false`` (a clear error otherwise)."""
    if value is None or (isinstance(value, str) and value.lower() == AUTO):
        return AUTO
    if isinstance(value, bool):
        return value
    raise ValueError(f'amp must be auto, true or false, got {value!r}')


def onednn_isa_cap() -> Optional[str]:
    """oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``, or its older name ``DNNL_MAX_CPU_ISA``), upper case; None unset."""
    value = os.environ.get('ONEDNN_MAX_CPU_ISA') or os.environ.get('DNNL_MAX_CPU_ISA')
    return value.strip().upper() if value else None


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown CPU'


def cpu_bf16_native(cap: Optional[str] = None) -> Tuple[bool, str]:
    """Whether oneDNN runs bfloat16 natively on this CPU, and what the CPU reports (torch's capability, bf16 units,
    the ISA cap ``cap``, default: :func:`onednn_isa_cap`)."""
    cap = onednn_isa_cap() if cap is None else cap
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() in ('aarch64', 'arm64'):
        units = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        names = 'Arm BF16' if units else 'no Arm BF16'
    else:
        avx512_bf16, amx = bool(torch.cpu._is_avx512_bf16_supported()), bool(torch.cpu._is_amx_tile_supported())
        units = avx512_bf16 or amx
        names = ', '.join(n for n, has in (('AVX512-BF16', avx512_bf16), ('AMX', amx)) if has) or 'no bf16 units'
    capped = cap in _ISA_WITHOUT_BF16
    hardware = f'{_cpu_model()}, {capability}, {names}' + (f', ONEDNN_MAX_CPU_ISA={cap}' if cap else '')
    return units and not capped, hardware


def cuda_bf16_native(device: Union[str, torch.device]) -> Tuple[bool, str]:
    """Whether the CUDA device has bf16 tensor cores (bf16 supported and compute capability >= 8.0)."""
    major, minor = torch.cuda.get_device_capability(device)
    native = torch.cuda.is_bf16_supported() and major >= 8
    return native, f'{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}'


def resolve_precision(amp: Union[str, bool, None], device: Union[str, torch.device], kept: bool = False) -> Precision:
    """The run's precision: ``amp`` forced (True / False) or ``auto`` by the rule of this module's docstring;
    ``kept``: ``amp`` is the value a resumed run recorded when it started (it keeps it, whatever this device)."""
    amp = parse_amp(amp)
    device = torch.device(device)
    if device.type == 'cuda':
        native, hardware = cuda_bf16_native(device)
        unit = 'bf16 tensor cores' if native else 'no bf16 tensor cores (compute capability < 8.0)'
    elif device.type == 'cpu':
        native, hardware = cpu_bf16_native()
        unit = 'native bf16 kernels' if native else 'no native bf16 kernels (oneDNN would emulate bfloat16)'
    else:
        native, hardware, unit = False, device.type, 'no bf16 rule for this device'
    if amp == AUTO:
        return Precision(native, AUTO, device.type, hardware, f'auto: {unit}')
    why = 'kept from the resumed run\'s args.yaml' if kept else f'forced by --{"" if amp else "no-"}amp'
    return Precision(amp, 'on' if amp else 'off', device.type, hardware,
                     why + ('' if amp == native else f' ({unit})'))


def autocast(device: Union[str, torch.device], amp: bool) -> ContextManager:
    """bfloat16 autocast on ``device`` when ``amp`` (a resolved precision), else full precision."""
    if amp == AUTO:
        raise ValueError('resolve --amp auto first (qpm_timm.precision.resolve_precision)')
    if not amp:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPE)


def to_device(images: torch.Tensor, device: Union[str, torch.device], channels_last: bool = False) -> torch.Tensor:
    """A batch of images on ``device``, in channels-last memory format with ``channels_last`` (4-D input only)."""
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images

"""Where the network runs: one ``device`` parameter for extraction, Grad-CAM and pretraining.

``auto`` takes a CUDA GPU when torch sees one, then Apple's MPS, else the CPU, so the same
parameters run on a laptop and on a GPU node. An explicit device that this machine does not
have is an error, never a silent fall-back (a run that asked for ``cuda`` and quietly took a
day on the CPU is worse than one that stops at once).
"""
from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator

import torch

from ..core.config import DEVICE_PATTERN
from ..core.errors import DataError

logger = logging.getLogger(__name__)

#: What the ``device`` parameter accepts (``cuda:N`` for any N as well).
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
_DEVICE_RE = re.compile(DEVICE_PATTERN)


class DeviceError(DataError):
    """A device that was asked for and is not on this machine."""


def check_device_name(name: str) -> str:
    """The name if it is one of auto / cpu / cuda / cuda:N / mps, else ``ValueError``."""
    text = str(name).strip().lower()
    if not _DEVICE_RE.match(text):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return text


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a ``device`` parameter; ``auto``: CUDA, then MPS, then CPU."""
    text = check_device_name(name)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {text!r} was asked for but torch sees no CUDA GPU on this machine "
                "(is this torch build CPU-only?); use device: auto or cpu"
            )
        index = int(text.split(":")[1]) if ":" in text else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {text!r} was asked for but this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", index)
    if text == "mps" and not _mps_available():
        raise DeviceError("device 'mps' was asked for but torch sees no Apple GPU; use device: auto or cpu")
    return torch.device(text)


def describe_device(device: torch.device) -> str:
    """A short name for records and reports, e.g. 'cpu' or 'cuda:0 (NVIDIA A100)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type


def cpu_has_native_bf16() -> bool:
    """True if the CPU has bf16 dot-product instructions (otherwise oneDNN emulates bf16, ~60x slower)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:  # not Linux: trust oneDNN's own (looser) check
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover
        return False


def mixed_precision_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: run in float32).

    ``bfloat16`` means bfloat16 autocast on the CPU and on GPUs that support it; older CUDA
    GPUs get float16 autocast instead (AMP), which needs a gradient scaler when training.
    """
    if precision == "float32":
        return None
    if precision != "bfloat16":
        raise ValueError(f"precision must be float32 or bfloat16, got {precision!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[torch.dtype | None]:
    """Mixed precision for a block of network calls, or nothing for float32; yields the dtype."""
    dtype = mixed_precision_dtype(device, precision)
    if dtype is None:
        yield None
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield dtype

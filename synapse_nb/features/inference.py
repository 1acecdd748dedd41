"""A fast CPU inference trunk for VGG3D (the network that turns a synapse cube into features).

Feature extraction never needs gradients, so the trunk is rebuilt for inference only:
BatchNorm folded into the convolutions, ReLU fused where the CPU kernel allows, channels-last
activations from the first convolution on, a pairwise max-pool, optional bfloat16, and reuse
of large allocations between batches (:func:`reuse_large_allocations`). Results equal the
plain ``VGG3D.forward_features`` to float32 rounding (tests/test_model.py). On a GPU the same
trunk runs with the folding only (the other tricks are CPU-specific).
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import logging
import os
import platform
import threading
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)
from ..core.layers import N_FEATURE_MODULES, validate_layer
from .vgg3d import VGG3D

# --------------------------------------------------------------------------- fast inference
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameters (glibc)
_PW_CONV = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


def fold_batchnorm(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one convolution equal to ``bn(conv(x))`` in eval mode (float32)."""
    scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.detach().float() + bn.eps)
    weight = conv.weight.detach().float() * scale.view(-1, 1, 1, 1, 1)
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.detach().float()) * scale + bn.bias.detach().float()
    return weight, bias


class InferenceTrunk:
    """``model.features[: upto + 1]`` rewritten for fast CPU inference; same outputs.

    * BatchNorm is folded into the preceding convolution (eval mode: an affine map), but only
      when the BN output is itself part of the requested computation: ``upto=20`` returns the
      conv output *before* BN 21, untouched.
    * A ReLU following a convolution is fused into it (oneDNN post-op) when that op exists,
      which saves one pass over the largest activations.
    * ``channels_last_3d`` memory format lets oneDNN use its fastest direct kernels.
    * ``dtype=torch.bfloat16`` casts the folded weights once (the fold is done in float32) and
      runs convolutions in bf16; the returned activation is float32.
    * ``device``: where the folded weights live and the trunk runs (inputs are moved there; the
      activation stays there). The oneDNN fused ReLU and channels-last are CPU tricks: on a GPU
      the plain convolutions run on contiguous (NCDHW) tensors, which cuDNN handles in any dtype.

    Built from a snapshot of the weights: rebuild after changing the model.
    """

    def __init__(
        self,
        model: VGG3D,
        upto: int | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
        fuse: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        self.upto = N_FEATURE_MODULES - 1 if upto is None else validate_layer(upto)
        self.dtype = dtype
        self.device = torch.device(device)
        on_cpu = self.device.type == "cpu"
        channels_last = bool(channels_last) and on_cpu
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.fused_relu = bool(fuse) and on_cpu and _pointwise_conv_works(dtype, channels_last)
        self.ops: list[tuple] = []
        mods = list(model.features[: self.upto + 1])
        i = 0
        while i < len(mods):
            m = mods[i]
            if isinstance(m, nn.Conv3d):
                if fuse and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm3d):
                    w, b = fold_batchnorm(m, mods[i + 1])
                    i += 1
                else:
                    w = m.weight.detach().float()
                    b = m.bias.detach().float() if m.bias is not None else None
                relu = self.fused_relu and i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
                if relu:
                    i += 1
                w = w.to(self.device, dtype).contiguous(memory_format=self.memory_format)
                b = b.to(self.device, dtype) if b is not None else None
                self.ops.append(("conv", w, b, list(m.padding), list(m.stride), list(m.dilation), m.groups, relu))
            elif isinstance(m, nn.BatchNorm3d):
                # only reached with fuse=False; a copy, so the caller's model is never cast
                self.ops.append(("module", copy.deepcopy(m).to(self.device, dtype).eval()))
            elif isinstance(m, nn.ReLU):
                self.ops.append(("relu",))
            elif isinstance(m, nn.MaxPool3d):
                self.ops.append(("pool", m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode))
            else:  # pragma: no cover - VGG3D has no other module kinds
                raise TypeError(f"unsupported module {m!r}")
            i += 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run on ``x`` (B, 1, Z, Y, X); returns a float32 tensor (B, C, z, y, x) on the trunk's device."""
        x = x.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
        if self.memory_format == torch.channels_last_3d and x.shape[1] == 1:
            # With one channel both layouts coincide and torch then treats the tensor as
            # NCDHW, so the first conv would write NCDHW and the next one pay a 49 MB
            # reorder. Channel stride 1 marks the (identical) memory as channels-last.
            b, _, d, h, w = x.shape
            x = x.as_strided(x.shape, (d * h * w, 1, h * w, w, 1))
        for op in self.ops:
            kind = op[0]
            if kind == "conv":
                _, w, b, pad, stride, dil, groups, relu = op
                if self.fused_relu:
                    x = _PW_CONV(x, w, b, pad, stride, dil, groups, "relu" if relu else "none", [], "")
                else:
                    x = F.conv3d(x, w, b, stride, pad, dil, groups)
                    if relu:
                        x = F.relu_(x)
            elif kind == "relu":
                x = F.relu_(x)
            elif kind == "pool":
                x = _max_pool(x, *op[1:])
            else:
                x = op[1](x)
        return x.float()
_alloc_lock = threading.Lock()
_alloc_depth = 0


@functools.lru_cache(maxsize=None)
def _glibc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        lib = ctypes.CDLL(None)
        return lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None
    except OSError:  # pragma: no cover
        return None


@contextlib.contextmanager
def reuse_large_allocations() -> Iterator[bool]:
    """Keep freed activation buffers in the heap while inside; yields whether it could.

    glibc serves every allocation above 32 MB (a float32 24 x 80^3 activation is 49 MB) with
    a fresh ``mmap``, and the kernel then zero-fills it page by page on first touch: ~48 000
    page faults and 0.1 s of system time per synapse, a fifth of the float32 forward pass.
    Inside this context ``mmap`` is switched off (``M_MMAP_MAX=0``) and the heap is not
    trimmed, so the same few buffers are reused without faults (float32 2.2 -> 2.5
    synapses/s, bf16 4.7 -> 5.1 on the reference machine). On exit the limits are restored
    (to the values glibc's own dynamic tuning settles on: mmap above 32 MB, trim above 64 MB)
    and the cached memory is handed back with ``malloc_trim``. Does nothing off glibc.
    Nested and concurrent use is reference counted.
    """
    global _alloc_depth
    lib = _glibc()
    if lib is None:
        yield False
        return
    with _alloc_lock:
        if _alloc_depth == 0:
            lib.mallopt(_M_MMAP_MAX, 0)
            lib.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        _alloc_depth += 1
    try:
        yield True
    finally:
        with _alloc_lock:
            _alloc_depth -= 1
            if _alloc_depth == 0:
                lib.mallopt(_M_MMAP_MAX, int(os.environ.get("MALLOC_MMAP_MAX_", 65536)))
                lib.mallopt(_M_MMAP_THRESHOLD, int(os.environ.get("MALLOC_MMAP_THRESHOLD_", 32 << 20)))
                lib.mallopt(_M_TRIM_THRESHOLD, int(os.environ.get("MALLOC_TRIM_THRESHOLD_", 64 << 20)))
                lib.malloc_trim(0)


def _max_pool(x: torch.Tensor, kernel, stride, padding, dilation, ceil_mode) -> torch.Tensor:
    """MaxPool3d; the 2x2x2 case on even channels-last volumes as three pairwise maxima.

    Same values as ``F.max_pool3d`` (NaN included) but ~40 % faster: it skips the index
    bookkeeping of the ATen kernel and streams along the contiguous channel axis.
    """
    simple = (
        kernel in (2, (2, 2, 2)) and stride in (2, (2, 2, 2)) and padding in (0, (0, 0, 0))
        and dilation in (1, (1, 1, 1)) and not ceil_mode
        and all(s % 2 == 0 for s in x.shape[2:])
        and x.is_contiguous(memory_format=torch.channels_last_3d) and x.shape[1] > 1
    )
    if not simple:
        return F.max_pool3d(x, kernel, stride, padding, dilation, ceil_mode)
    v = x.permute(0, 2, 3, 4, 1)  # (B, D, H, W, C), contiguous
    v = torch.maximum(v[:, 0::2], v[:, 1::2])
    v = torch.maximum(v[:, :, 0::2], v[:, :, 1::2])
    v = torch.maximum(v[:, :, :, 0::2], v[:, :, :, 1::2])
    return v.permute(0, 4, 1, 2, 3)


@functools.lru_cache(maxsize=None)
def _pointwise_conv_works(dtype: torch.dtype, channels_last: bool) -> bool:
    """Whether oneDNN's fused conv+ReLU op exists here and agrees with conv3d + relu.

    It is an internal op (the one torch.compile uses on CPU), so it is checked once on a tiny
    problem and the plain ops are used if it is missing or misbehaves.
    """
    if _PW_CONV is None:
        return False
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 6, 6, 6, generator=gen).to(dtype).contiguous(memory_format=fmt)
    w = torch.randn(5, 3, 3, 3, 3, generator=gen).to(dtype).contiguous(memory_format=fmt)
    b = torch.randn(5, generator=gen).to(dtype)
    try:
        with torch.inference_mode():
            got = _PW_CONV(x, w, b, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, "relu", [], "")
            want = F.relu(F.conv3d(x, w, b, padding=1))
    except Exception as exc:  # pragma: no cover - depends on the torch build
        logger.info("fused conv+ReLU unavailable (%s); using conv3d + relu", exc)
        return False
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    ok = got.shape == want.shape and torch.allclose(got.float(), want.float(), rtol=tol, atol=tol)
    if not ok:  # pragma: no cover
        logger.warning("fused conv+ReLU disagrees with conv3d + relu; not using it")
    return bool(ok)

"""The layout of the VGG3D network as numbers: module indices, channels, sizes (no torch).

The layout must match the HemiBrain checkpoint exactly, because users load that file by
path and refer to layers by index ("layer 20" is ``features.20``). Every number describing
the architecture is defined once here; the network (:mod:`synapse_nb.features.vgg3d`) and
parameter validation both derive from it, so checking a parameter never loads torch.
"""
from __future__ import annotations

import logging
import operator

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- architecture
INPUT_SIZE = 80
"""Edge length of the cube the network (and its head) was designed for."""
BLOCK_REPEATS: tuple[int, ...] = (4, 2, 2, 2)
"""Number of [Conv3d -> BatchNorm3d -> ReLU] units in each of the four blocks."""
CHANNELS: tuple[int, ...] = (24, 48, 96, 192)
"""Output channels of the convolutions of each block."""
KERNEL_SIZE = 3
HEAD_HIDDEN = 4096
INPUT_RANGES: tuple[str, ...] = ("0_1", "-1_1")
"""Value conventions of the network input: intensities in [0, 1] (what the seed fed) or
rescaled to [-1, 1] (what the HemiBrain weights were trained on)."""


def _layout() -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """Derive the module kinds and per-module output channels from the block description."""
    kinds: list[str] = []
    chans: list[int] = []
    for reps, ch in zip(BLOCK_REPEATS, CHANNELS):
        for _ in range(reps):
            kinds += ["conv", "bn", "relu"]
            chans += [ch, ch, ch]
        kinds.append("pool")
        chans.append(ch)
    pools = [i for i, k in enumerate(kinds) if k == "pool"]
    scale = [2 ** sum(1 for p in pools if p <= i) for i in range(len(kinds))]
    return tuple(kinds), tuple(chans), tuple(scale)


MODULE_KINDS, MODULE_CHANNELS, _MODULE_DOWNSCALE = _layout()
"""Kind ("conv", "bn", "relu", "pool") and output channels of ``features[i]``."""
N_FEATURE_MODULES = len(MODULE_KINDS)
CONV_INDICES: tuple[int, ...] = tuple(i for i, k in enumerate(MODULE_KINDS) if k == "conv")
BN_INDICES: tuple[int, ...] = tuple(i for i, k in enumerate(MODULE_KINDS) if k == "bn")
RELU_INDICES: tuple[int, ...] = tuple(i for i, k in enumerate(MODULE_KINDS) if k == "relu")
POOL_INDICES: tuple[int, ...] = tuple(i for i, k in enumerate(MODULE_KINDS) if k == "pool")
TRUNK_CHANNELS = CHANNELS[-1]
TRUNK_OUTPUT_SIZE = INPUT_SIZE // 2 ** len(BLOCK_REPEATS)
TRUNK_OUTPUT_SHAPE = (TRUNK_CHANNELS,) + (TRUNK_OUTPUT_SIZE,) * 3
HEAD_INPUT = TRUNK_CHANNELS * TRUNK_OUTPUT_SIZE**3
HEAD_LINEAR_INDICES = (0, 3, 6)
"""Indices of the Linear layers in ``classifier``; the last one gives the class count."""

assert N_FEATURE_MODULES == 34
assert CONV_INDICES == (0, 3, 6, 9, 13, 16, 20, 23, 27, 30)
assert POOL_INDICES == (12, 19, 26, 33)
assert HEAD_INPUT == 24000

def validate_layer(layer_num: int) -> int:
    """Return ``layer_num`` as int if it names a module of ``features``; else ValueError."""
    try:
        if isinstance(layer_num, bool):
            raise TypeError
        index = operator.index(layer_num)
    except TypeError:
        raise ValueError(
            f"layer_num must be an integer 0..{N_FEATURE_MODULES - 1}, got {layer_num!r}"
        ) from None
    if not 0 <= index < N_FEATURE_MODULES:
        raise ValueError(
            f"layer_num must be 0..{N_FEATURE_MODULES - 1} (index into VGG3D.features), got {index}; "
            f"convolutions sit at {CONV_INDICES}, pools at {POOL_INDICES}"
        )
    return index


def layer_channels(layer_num: int) -> int:
    """Channels of the output of ``features[layer_num]`` (e.g. 96 for layer 20)."""
    return MODULE_CHANNELS[validate_layer(layer_num)]


def layer_downscale(layer_num: int) -> int:
    """Factor by which ``features[layer_num]`` shrinks each axis (1, 2, 4, 8 or 16)."""
    return _MODULE_DOWNSCALE[validate_layer(layer_num)]


def layer_output_size(layer_num: int, input_size: int = INPUT_SIZE) -> int:
    """Spatial edge length of ``features[layer_num]``'s output for a cube of ``input_size``."""
    return input_size // _MODULE_DOWNSCALE[validate_layer(layer_num)]


def layer_description(layer_num: int) -> str:
    """Human text such as 'features.20 (Conv3d 48->96, before BatchNorm) at 20^3'."""
    i = validate_layer(layer_num)
    kind = MODULE_KINDS[i]
    size = layer_output_size(i)
    if kind == "conv":
        cin = 1 if i == 0 else MODULE_CHANNELS[i - 1]
        what = f"Conv3d {cin}->{MODULE_CHANNELS[i]}, before BatchNorm"
    else:
        what = {"bn": "BatchNorm3d", "relu": "ReLU", "pool": "MaxPool3d"}[kind] + f", {MODULE_CHANNELS[i]} channels"
    return f"features.{i} ({what}) at {size}^3"

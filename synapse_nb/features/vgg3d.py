"""The VGG3D feature network: the module layout of the HemiBrain checkpoint, nothing else.

Four blocks of [Conv3d -> BatchNorm3d -> ReLU] units and a max-pool; the numbers come from
:mod:`synapse_nb.core.layers`. The classifier head holds ~115 M of the ~117 M parameters but
is never needed for features, so it is only built when asked for with ``num_classes=``.
Random weights are seeded (:func:`init_random`); loading lives in :mod:`.checkpoint`.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)
from typing import TYPE_CHECKING

from ..core.layers import (
    BLOCK_REPEATS,
    CHANNELS,
    HEAD_HIDDEN,
    HEAD_INPUT,
    KERNEL_SIZE,
    N_FEATURE_MODULES,
    validate_layer,
)

if TYPE_CHECKING:
    from .checkpoint import ModelInfo


class VGG3D(nn.Module):
    """3-D VGG used for HemiBrain synapse classification, laid out exactly as its checkpoint.

    ``num_classes=None`` builds the trunk only (all that feature extraction needs).
    """

    def __init__(self, num_classes: int | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for reps, ch in zip(BLOCK_REPEATS, CHANNELS):
            for _ in range(reps):
                layers += [
                    nn.Conv3d(cin, ch, kernel_size=KERNEL_SIZE, padding=KERNEL_SIZE // 2),
                    nn.BatchNorm3d(ch),
                    nn.ReLU(inplace=True),
                ]
                cin = ch
            layers.append(nn.MaxPool3d(2))
        self.features = nn.Sequential(*layers)
        self.num_classes: int | None = None
        self.classifier: nn.Sequential | None = None
        self.info: ModelInfo | None = None
        if num_classes is not None:
            self.add_head(num_classes, dropout)

    def add_head(self, num_classes: int, dropout: float = 0.5) -> None:
        """Attach the (large) classifier head with ``num_classes`` outputs."""
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.classifier = nn.Sequential(
            nn.Linear(HEAD_INPUT, HEAD_HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(HEAD_HIDDEN, HEAD_HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(HEAD_HIDDEN, self.num_classes),
        )

    @property
    def has_head(self) -> bool:
        return self.classifier is not None

    def forward_features(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Output of ``features[upto]`` (``None``: the whole trunk), computing nothing after it."""
        last = N_FEATURE_MODULES - 1 if upto is None else validate_layer(upto)
        for module in self.features[: last + 1]:
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits; needs the head (load a checkpoint with one or pass ``num_classes``)."""
        if self.classifier is None:
            raise RuntimeError(
                "this VGG3D has no classifier head (it is only built when a checkpoint with "
                "classifier.* keys is loaded or num_classes= is given); use forward_features() for features"
            )
        x = self.forward_features(x)
        return self.classifier(torch.flatten(x, 1))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def init_random(model: VGG3D, seed: int) -> None:
    """Deterministic random initialisation from ``seed`` without touching the global RNG.

    Kaiming-normal (fan_out, ReLU) convolutions with zero bias keep activations at a sane scale
    through all ten convolutions, so untrained features are not dominated by vanishing signals.
    BatchNorm becomes the identity in eval mode (weight 1, bias 0, mean 0, var 1).
    """
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01, generator=gen)
                nn.init.zeros_(m.bias)


# glibc mallopt parameters (malloc.h)

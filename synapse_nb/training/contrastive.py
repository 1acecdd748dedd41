"""SimCLR for the VGG3D trunk: encoder (trunk up to the extraction layer), projection head, NT-Xent.

Why SimCLR / NT-Xent: SynapseCLR, the reference for self-supervised learning on 3-D EM
synapse cubes, trained with it; and its objective is exactly what the clustering needs from
the features: two views of the same synapse (differing only in pose, imaging and occlusion)
must be closer than views of different synapses.

The encoder runs the trunk only up to ``upto`` (the layer the features are extracted from),
average-pools over space (what extraction's default ``avg`` pooling does) and feeds a small
MLP head; as in SimCLR the loss is computed on the head's output, and the head is dropped
after training. Trunk layers after ``upto`` get no gradient and keep their initial weights,
which is harmless because extraction never runs them.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.layers import N_FEATURE_MODULES, layer_channels, validate_layer
from ..features.vgg3d import VGG3D
from .augment import AugmentSettings, build_transform, resample_cubes, two_views

logger = logging.getLogger(__name__)

PROJECTION_DIM = 128
"""Output size of the projection head (SimCLR's choice; the loss is computed there)."""


class ProjectionHead(nn.Module):
    """SimCLR's projection MLP: Linear -> BatchNorm -> ReLU -> Linear (to 128 dimensions).

    The head absorbs what the loss needs but the features should not lose (SimCLR found the
    representation *before* the head clusters better), so it is only used while training.
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = PROJECTION_DIM) -> None:
        super().__init__()
        hidden = int(hidden_dim) if hidden_dim else max(int(in_dim), out_dim)
        self.net = nn.Sequential(
            nn.Linear(int(in_dim), hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, int(out_dim)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def resolve_upto(upto: int | None) -> int:
    """The trunk module training and extraction stop at (None: the whole trunk)."""
    return N_FEATURE_MODULES - 1 if upto is None else validate_layer(upto)


class ContrastiveEncoder(nn.Module):
    """VGG3D trunk up to ``upto`` + global average pool + projection head.

    The head is initialised from ``seed`` without touching the global random state, so two
    encoders built with the same seed are identical.
    """

    def __init__(self, trunk: VGG3D, upto: int | None, seed: int = 0, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.upto = resolve_upto(upto)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.head = ProjectionHead(layer_channels(self.upto), hidden_dim)

    def trained_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive gradients: trunk modules 0..upto and the head."""
        used = list(self.trunk.features[: self.upto + 1].parameters())
        return used + list(self.head.parameters())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features (B, C): what extraction with ``avg`` pooling returns."""
        return self.trunk.forward_features(x, self.upto).float().mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two views (B, D) each, row i of ``z1`` and of ``z2`` a positive pair.

    Uses pytorch-metric-learning's ``NTXentLoss`` with labels over the 2B embeddings (both
    views share the synapse's label) rather than ``SelfSupervisedLoss``: with labels every
    view is an anchor against all 2B - 2 other views as negatives, SimCLR's formulation,
    whereas ``SelfSupervisedLoss`` only contrasts ``z1`` against ``z2`` (B - 1 negatives),
    which halves the negatives the small batches of CPU training can afford.
    """
    from pytorch_metric_learning.losses import NTXentLoss

    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"two views of shape (B, D) are needed, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if len(z1) < 2:
        raise ValueError("NT-Xent needs at least 2 synapses per batch (the others are the negatives)")
    n = len(z1)
    labels = torch.arange(n, device=z1.device).repeat(2)
    return NTXentLoss(temperature=float(temperature))(torch.cat([z1, z2]).float(), labels)


@torch.no_grad()
def view_agreement(
    trunk: VGG3D,
    cubes: Any,
    *,
    upto: int | None,
    augment: AugmentSettings = AugmentSettings(),
    cube_size: int | None = None,
    input_range: str = "0_1",
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, float]:
    """How well the pooled trunk features tell synapses apart across augmented views.

    Two views of every synapse are embedded (trunk in eval mode, as extraction runs it),
    standardised per feature over all views and compared by cosine similarity: ``positive`` is the mean cosine of the two views of one
    synapse, ``negative`` the mean over views of different synapses, ``margin`` their
    difference and ``top1`` the fraction of views whose nearest other view is their partner.
    Pretraining should raise ``margin`` and ``top1``; random weights show what pose and
    brightness alone do.
    """
    n = len(cubes)
    if n < 2:
        raise ValueError("view_agreement needs at least 2 synapses")
    upto_i = resolve_upto(upto)
    was_training = trunk.training
    trunk.eval()
    device = next(trunk.parameters()).device
    transform = None
    firsts, seconds = [], []
    try:
        for b, start in enumerate(range(0, n, batch_size)):
            x = resample_cubes(np.asarray(cubes[start : start + batch_size], dtype=np.float32), cube_size)
            if transform is None:
                transform = build_transform(augment, int(x.shape[1]))
            v1, v2 = two_views(x, augment, seed=seed, epoch=-1, batch=b, transform=transform)
            for v, out in ((v1, firsts), (v2, seconds)):
                v = v * 2.0 - 1.0 if input_range == "-1_1" else v
                feats = trunk.forward_features(v.unsqueeze(1).to(device), upto_i).float().mean(dim=(2, 3, 4))
                out.append(feats.cpu())
    finally:
        trunk.train(was_training)
    feats = torch.cat(firsts + seconds)
    # standardised per feature over all views (as the pipeline's reduction does): raw pooled
    # activations share a large common offset that makes every cosine close to 1
    feats = (feats - feats.mean(dim=0)) / (feats.std(dim=0) + 1e-6)
    both = torch.nn.functional.normalize(feats, dim=1)
    a, b_ = both[:n], both[n:]
    sim = both @ both.T
    partner = torch.cat([torch.arange(n) + n, torch.arange(n)])
    positive = float((a * b_).sum(dim=1).mean())
    mask = torch.ones_like(sim, dtype=torch.bool)
    mask.fill_diagonal_(False)
    mask[torch.arange(2 * n), partner] = False
    negative = float(sim[mask].mean())
    sim.fill_diagonal_(-float("inf"))
    top1 = float((sim.argmax(dim=1) == partner).float().mean())
    return {"positive": positive, "negative": negative, "margin": positive - negative, "top1": top1}

"""Self-supervised pretraining of the VGG3D trunk on the user's own synapse cubes (SimCLR).

Without the HemiBrain checkpoint the trunk is random and its features follow brightness and
pose more than shape. :func:`pretrain` trains the trunk, up to the layer features are
extracted from, so that two augmented views of one synapse map close together and views of
different synapses apart (SimCLR's NT-Xent, as SynapseCLR did for 3-D EM synapses; see
:mod:`.contrastive`). The result is a ``weights.pt`` that :func:`synapse_nb.features.build_model`
loads like any checkpoint, with the training record inside it.

Runs are resumable and reproducible: after every epoch the full training state is written
atomically to ``training_state.pt``; a call with the same settings and ``out_dir`` continues
after the last finished epoch, and because shuffling and augmentation are seeded per
(seed, epoch, batch), the resumed run computes what an uninterrupted run would have.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..core.atomic import atomic_path
from ..core.errors import DataError
from ..core.layers import INPUT_RANGES, layer_downscale
from ..core.progress_bars import progress as progress_bar
from ..features.checkpoint import PRETRAINING_KEY, build_model
from ..features.devices import autocast, describe_device, mixed_precision_dtype, resolve_device
from ..features.extract import CubeSource
from .augment import AugmentSettings, build_transform, resample_cubes, two_views
from .contrastive import ContrastiveEncoder, nt_xent_loss, resolve_upto

logger = logging.getLogger(__name__)

METHOD = "SimCLR (NT-Xent)"
STATE_FILE = "training_state.pt"
WEIGHTS_FILE = "weights.pt"
HISTORY_FILE = "history.csv"
STATE_FORMAT = 1
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
HISTORY_COLUMNS = ("epoch", "loss", "seconds", "lr")


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that decides a pretraining run (all of it but ``patience`` / ``min_delta``
    enters the fingerprint that guards resuming).

    * ``cube_size``: edge the cubes are resampled to for training (same field of view, fewer
      voxels; None keeps the stored size). Training cost grows with its cube.
    * ``upto``: trunk module trained and extracted from (``stage_specific``: its ``layer_num``;
      None: the whole trunk, for ``standard`` extraction).
    * ``learning_rate`` / ``weight_decay``: AdamW, decayed by a cosine over ``epochs``.
    * ``temperature``: NT-Xent temperature (0.1: SimCLR's value for small batches).
    * ``patience`` / ``min_delta``: stop when the epoch loss has not fallen by ``min_delta``
      (relative) for ``patience`` epochs.
    """

    epochs: int = 50
    batch_size: int = 16
    cube_size: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    patience: int = 10
    min_delta: float = 0.01
    precision: str = "float32"
    seed: int = 42
    upto: int | None = 20
    input_range: str = "0_1"
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if name == "patience" else 1):
                raise ValueError(f"pretraining {name} must be a positive integer, got {value!r}")
        if self.batch_size < 2:
            raise ValueError(f"pretraining batch_size must be >= 2 (the other synapses are the negatives), got {self.batch_size}")
        if self.cube_size is not None and (isinstance(self.cube_size, bool) or int(self.cube_size) != self.cube_size or self.cube_size < 1):
            raise ValueError(f"pretraining cube_size must be None or a positive integer, got {self.cube_size!r}")
        for name in ("learning_rate", "temperature"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"pretraining {name} must be > 0, got {getattr(self, name)!r}")
        if float(self.weight_decay) < 0 or float(self.min_delta) < 0:
            raise ValueError("pretraining weight_decay and min_delta must be >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"pretraining precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.input_range not in INPUT_RANGES:
            raise ValueError(f"pretraining input_range must be one of {INPUT_RANGES}, got {self.input_range!r}")
        resolve_upto(self.upto)
        if not isinstance(self.augment, AugmentSettings):
            raise ValueError(f"pretraining augment must be AugmentSettings, got {type(self.augment).__name__}")

    def as_dict(self) -> dict[str, Any]:
        """Plain values (nested augment dict, lists) for metadata and the fingerprint."""
        out = {k: v for k, v in asdict(self).items() if k != "augment"}
        out["augment"] = self.augment.as_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainSettings":
        values = dict(values)
        aug = values.pop("augment", None)
        return cls(**values, augment=AugmentSettings.from_dict(aug) if aug else AugmentSettings())


@dataclass
class PretrainResult:
    """What a pretraining run produced; ``weights_path`` goes to ``build_model``."""

    history: pd.DataFrame  # epoch, loss, seconds, lr
    weights_path: Path
    state_path: Path
    metadata: dict[str, Any]
    stopped_early: bool
    stop_reason: str
    device: str
    resumed_from: int  # epochs already done when this call started (0: a fresh run)

    def describe(self) -> str:
        m = self.metadata
        return (
            f"{METHOD}: {m['epochs_run']} epoch(s) on {m['n_synapses']} synapses at {m['cube_size']}^3, "
            f"loss {m['final_loss']:.3f} (best {m['best_loss']:.3f}); {self.stop_reason}; weights {self.weights_path}"
        )


# --------------------------------------------------------------------------- helpers
def _fingerprint(settings: PretrainSettings, init_weights: str | None, n: int, shape: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    """Hash of what decides the trajectory (stopping rules excluded: they only decide when to stop)."""
    decided = {k: v for k, v in settings.as_dict().items() if k not in ("patience", "min_delta")}
    decided.update(init_weights=init_weights, n_synapses=int(n), input_shape=[int(s) for s in shape])
    text = json.dumps(decided, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16], decided


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _read(cubes: CubeSource, idx: np.ndarray) -> torch.Tensor:
    """Cubes ``idx`` as (b, Z, Y, X) float32, one slice each (never the whole source)."""
    parts = []
    for i in idx:
        arr = np.asarray(cubes[int(i) : int(i) + 1], dtype=np.float32)
        if arr.ndim != 4 or len(arr) != 1:
            raise ValueError(f"cubes[{i}:{i + 1}] has shape {arr.shape}; expected (1, Z, Y, X), one 3-D cube per synapse")
        if not np.isfinite(arr).all():
            raise ValueError(f"cube {int(i)} contains NaN or infinite values; rebuild the cubes")
        parts.append(arr)
    return torch.from_numpy(np.concatenate(parts))


def _atomic_torch_save(obj: Any, target: Path) -> None:
    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def _plain(value: Any) -> Any:
    """Only str/int/float/bool/None/list/dict, so ``weights_only=True`` reads it back."""
    return json.loads(json.dumps(value, default=str))


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in module.state_dict().items()}


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """A seeded permutation split into near-equal batches (all >= 2 synapses when n >= 2)."""
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    return np.array_split(perm, max(1, math.ceil(n / batch_size)))


# --------------------------------------------------------------------------- training
def pretrain(
    cubes: CubeSource,
    *,
    settings: PretrainSettings = PretrainSettings(),
    out_dir: str | Path,
    device: str = "auto",
    init_weights: str | Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, float, float], None] | None = None,
    describe_data: dict[str, Any] | None = None,
) -> PretrainResult:
    """Train the trunk with SimCLR on ``cubes`` (len + slicing, (b, Z, Y, X) in [0, 1]).

    ``init_weights``: None starts from seeded random weights (``settings.seed``); a checkpoint
    path fine-tunes it (its classifier head, if any, is dropped). After every epoch
    ``out_dir`` gets ``training_state.pt`` (to resume), ``weights.pt`` (the trunk of the last
    epoch + the training record) and ``history.csv``. Calling again with the same settings
    resumes (or returns at once when the run is complete); other settings are refused.
    ``on_epoch(epoch, loss, seconds)`` is called after each epoch is saved.
    """
    out = Path(out_dir).expanduser()
    n, shape, size, upto = _check_cubes(cubes, settings)
    init_text = None if init_weights is None else str(Path(init_weights).expanduser())
    fingerprint, decided = _fingerprint(settings, init_text, n, shape)
    dev = resolve_device(device)
    t = _start(settings, init_text, upto, dev)
    state_path = out / STATE_FILE
    if state_path.is_file():
        _resume(t, state_path, fingerprint, decided)
        logger.info("resuming pretraining in %s after epoch %d of %d", out, len(t.history), settings.epochs)
    resumed_from = len(t.history)
    record = dict(
        settings=settings, fingerprint=fingerprint, decided=decided, n=n, shape=shape, size=size, upto=upto,
        init_text=init_text, describe_data=describe_data, device=describe_device(dev),
    )
    transform = build_transform(settings.augment, size)

    def calibrate() -> dict[str, torch.Tensor]:
        return calibrated_trunk_state(t.encoder, cubes, size=size, input_range=settings.input_range, batch_size=settings.batch_size)

    t.encoder.train()
    for epoch in range(len(t.history), settings.epochs):
        if t.stale >= settings.patience:
            break
        t0 = time.perf_counter()
        lr = float(t.optimizer.param_groups[0]["lr"])
        epoch_loss = _run_epoch(t, cubes, settings, epoch=epoch, size=size, transform=transform, progress=progress)
        t.scheduler.step()
        seconds = time.perf_counter() - t0
        t.history.append({"epoch": epoch + 1, "loss": epoch_loss, "seconds": seconds, "lr": lr})
        if not math.isfinite(t.best) or epoch_loss < t.best - settings.min_delta * abs(t.best):
            t.best, t.best_epoch, t.stale = epoch_loss, epoch + 1, 0
        else:
            t.stale += 1
        _save_epoch(t, out, record, calibrate)
        logger.info("pretraining epoch %d/%d: loss %.4f, %.1f s", epoch + 1, settings.epochs, epoch_loss, seconds)
        if on_epoch is not None:
            on_epoch(epoch + 1, epoch_loss, seconds)

    if not t.history:  # epochs >= 1, so only a stale state with patience 0 gets here
        raise DataError(f"{state_path} holds no finished epoch and patience is 0; delete it or raise patience")
    stop_reason = _stop_reason(settings, t.history, t.stale, t.best, t.best_epoch)
    metadata = _metadata(record, t.history, t.best, t.best_epoch, t.stale, stop_reason)
    weights_path = out / WEIGHTS_FILE
    if not weights_path.is_file() or len(t.history) == resumed_from:
        # a finished run called again (or its weights deleted): the record reflects the call's patience
        _save_weights(weights_path, calibrate(), metadata)
        _save_history(out / HISTORY_FILE, t.history)
    return PretrainResult(
        history=pd.DataFrame(t.history, columns=list(HISTORY_COLUMNS)),
        weights_path=weights_path,
        state_path=state_path,
        metadata=metadata,
        stopped_early=t.stale >= settings.patience and len(t.history) < settings.epochs,
        stop_reason=stop_reason,
        device=describe_device(dev),
        resumed_from=resumed_from,
    )


def _save_epoch(t: "_Training", out: Path, record: dict[str, Any], calibrate: Callable[[], dict[str, torch.Tensor]]) -> None:
    """After every epoch: the state to resume from, the weights so far and the history.

    The weights of the last epoch are kept, not of the best: the loss is a noisy estimate (new
    views every epoch) and its minimum is not a better model. Their BatchNorm statistics are
    measured afresh on the plain cubes (``calibrate``, one forward pass), since extraction
    uses them.
    """
    settings = record["settings"]
    _save_state(out / STATE_FILE, t.encoder, t.optimizer, t.scheduler, t.scaler, t.history, t.best, t.best_epoch, t.stale,
                record["fingerprint"], record["decided"])
    metadata = _metadata(record, t.history, t.best, t.best_epoch, t.stale,
                         _stop_reason(settings, t.history, t.stale, t.best, t.best_epoch))
    _save_weights(out / WEIGHTS_FILE, calibrate(), metadata)
    _save_history(out / HISTORY_FILE, t.history)


def _check_cubes(cubes: CubeSource, settings: PretrainSettings) -> tuple[int, tuple[int, ...], int, int]:
    """Number of cubes, their shape, the edge trained at and the last trained module, checked."""
    n = len(cubes)
    if n < 2:
        raise DataError(f"pretraining needs at least 2 synapses (the others are each one's negatives), got {n}")
    first = np.asarray(cubes[0:1])
    if first.ndim != 4 or len(first) != 1:
        raise ValueError(f"cubes[0:1] has shape {first.shape}; expected (1, Z, Y, X), one 3-D cube per synapse")
    shape = tuple(int(s) for s in first.shape[1:])
    size = int(settings.cube_size) if settings.cube_size is not None else shape[0]
    if settings.cube_size is None and len(set(shape)) != 1:
        raise ValueError(f"cubes of shape {shape} are not cubic; set cube_size to resample them to a cube")
    upto = resolve_upto(settings.upto)
    need = layer_downscale(upto)
    if size < 2 * need:
        raise ValueError(f"cube_size {size} is too small for training up to features.{upto}: use >= {2 * need}")
    return n, shape, size, upto


@dataclass
class _Training:
    """What one training run updates epoch by epoch (and what a resume restores)."""

    encoder: ContrastiveEncoder
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    device: torch.device
    layout: torch.memory_format
    amp_dtype: torch.dtype | None
    history: list[dict[str, float]] = field(default_factory=list)
    best: float = math.inf
    best_epoch: int = 0
    stale: int = 0


def _start(settings: PretrainSettings, init_text: str | None, upto: int, dev: torch.device) -> _Training:
    """The encoder (from seeded random weights or a checkpoint), its optimizer and schedule.

    AdamW with a cosine decay of the learning rate over ``epochs`` to 1% of it, stepped per
    epoch: no knob beyond the epochs, and it ends at a small rate, so the last weights (those
    kept) have settled.
    """
    model, info = build_model(init_text, seed=settings.seed, warn_random=False)
    logger.info("pretraining starts from %s", info.description() if init_text else f"seeded random weights (seed {settings.seed})")
    if model.has_head:  # fine-tuning a checkpoint with a classifier: features only
        model.classifier = None
        model.num_classes = None
    if init_text is not None and info.default_input_range != settings.input_range:
        logger.warning(
            "the initial weights expect input range %s but pretraining uses %s (settings.input_range)",
            info.default_input_range, settings.input_range,
        )
    encoder = ContrastiveEncoder(model, upto, seed=settings.seed).to(dev)
    # channels-last 3-D convolutions train ~1.3x faster on the CPU (4.3 vs 5.6 s for 32 views
    # of 32^3 on 2 cores); same arithmetic, so the same run is still reproducible.
    layout = torch.channels_last_3d if dev.type == "cpu" else torch.contiguous_format
    encoder = encoder.to(memory_format=layout)
    params = encoder.trained_parameters()
    for p in encoder.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs, eta_min=settings.learning_rate * 0.01)
    amp_dtype = mixed_precision_dtype(dev, settings.precision)
    scaler = torch.amp.GradScaler(dev.type) if amp_dtype == torch.float16 else None
    return _Training(encoder, optimizer, scheduler, scaler, dev, layout, amp_dtype)


def _resume(t: _Training, state_path: Path, fingerprint: str, decided: dict[str, Any]) -> None:
    """Restore a run from its state file; refuse one written with other settings."""
    state = _load_state(state_path)
    if state.get("fingerprint") != fingerprint:
        diff = _differences(state.get("decided", {}), decided)
        raise DataError(
            f"{state_path} belongs to a pretraining run with other settings ({'; '.join(diff[:4]) or 'unknown'}); "
            "use another out_dir for these settings, or delete that file to start over"
        )
    t.encoder.load_state_dict(state["encoder"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    if t.scaler is not None and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    t.history = [dict(h) for h in state["history"]]
    t.best, t.best_epoch, t.stale = float(state["best_loss"]), int(state["best_epoch"]), int(state["stale_epochs"])


def _run_epoch(t: _Training, cubes: CubeSource, settings: PretrainSettings, *, epoch: int, size: int,
               transform: Any, progress: bool) -> float:
    """One pass over the cubes in seeded batches of two views each; returns the mean loss."""
    n = len(cubes)
    total = 0.0
    bar = progress_bar(total=n, desc=f"pretrain epoch {epoch + 1}/{settings.epochs}", enabled=progress, unit="syn")
    with bar:
        for b, idx in enumerate(_batches(n, settings.batch_size, settings.seed, epoch)):
            x = resample_cubes(_read(cubes, idx), size)
            v1, v2 = two_views(x, settings.augment, seed=settings.seed, epoch=epoch, batch=b, transform=transform)
            views = torch.cat([v1, v2]).unsqueeze(1)
            if settings.input_range == "-1_1":
                views = views * 2.0 - 1.0
            views = views.to(t.device).contiguous(memory_format=t.layout)
            with autocast(t.device, settings.precision):
                z = t.encoder(views)
            loss = nt_xent_loss(z[: len(idx)].float(), z[len(idx):].float(), settings.temperature)
            if not torch.isfinite(loss):
                raise DataError(
                    f"pretraining loss became {float(loss)} in epoch {epoch + 1}, batch {b + 1}: "
                    "lower learning_rate" + (" or use precision float32" if t.amp_dtype is not None else "")
                )
            t.optimizer.zero_grad(set_to_none=True)
            if t.scaler is not None:
                t.scaler.scale(loss).backward()
                t.scaler.step(t.optimizer)
                t.scaler.update()
            else:
                loss.backward()
                t.optimizer.step()
            total += float(loss.detach()) * len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{total / max(1, bar.n):.3f}")
    return total / n


def _stop_reason(settings: PretrainSettings, history: list[dict[str, float]], stale: int, best: float, best_epoch: int) -> str:
    if stale >= settings.patience and len(history) < settings.epochs:
        return (
            f"stopped early after epoch {len(history)}: the loss did not fall by {settings.min_delta:.0%} for "
            f"{settings.patience} epoch(s) (best {best:.4f} at epoch {best_epoch})"
        )
    if len(history) >= settings.epochs:
        return f"all {settings.epochs} epochs run"
    return f"{len(history)} of {settings.epochs} epochs run so far"


def _metadata(
    record: dict[str, Any], history: list[dict[str, float]], best: float, best_epoch: int, stale: int, stop_reason: str,
) -> dict[str, Any]:
    """The training record stored in ``weights.pt`` (plain values only)."""
    settings: PretrainSettings = record["settings"]
    return _plain({
        "method": METHOD,
        "settings": settings.as_dict(),
        "fingerprint": record["fingerprint"],
        "epochs_run": len(history),
        "epochs_planned": settings.epochs,
        "final_loss": history[-1]["loss"],
        "best_loss": best,
        "best_epoch": best_epoch,
        "loss_per_epoch": [h["loss"] for h in history],
        "seconds_per_epoch": [h["seconds"] for h in history],
        "lr_per_epoch": [h["lr"] for h in history],
        "stop_reason": stop_reason,
        "input_range": settings.input_range,
        "cube_size": record["size"],
        "input_shape": list(record["shape"]),
        "upto": record["upto"],
        "n_synapses": record["n"],
        "init_weights": record["init_text"],
        "describe_data": record["describe_data"] or {},
        "device": record["device"],
        "synapse_nb_version": __version__,
    })


def _save_state(
    path: Path, encoder: ContrastiveEncoder, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
    history: list[dict[str, float]], best: float, best_epoch: int, stale: int, fingerprint: str, decided: dict[str, Any],
) -> None:
    _atomic_torch_save({
        "format": STATE_FORMAT,
        "fingerprint": fingerprint,
        "decided": _plain(decided),
        "encoder": _cpu_state(encoder),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "history": [dict(h) for h in history],
        "best_loss": float(best),
        "best_epoch": int(best_epoch),
        "stale_epochs": int(stale),
    }, path)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{path} cannot be read ({type(exc).__name__}); it is not a pretraining state of this version: "
            "delete it to start over, or use another out_dir"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DataError(f"{path} is not a pretraining state of this version; delete it to start over, or use another out_dir")
    return state


@torch.no_grad()
def calibrated_trunk_state(
    encoder: ContrastiveEncoder, cubes: CubeSource, *, size: int, input_range: str, batch_size: int,
) -> dict[str, torch.Tensor]:
    """The trunk's state with BatchNorm statistics measured on the plain (unaugmented) cubes.

    Extraction runs BatchNorm in eval mode, with its running statistics; during training
    those are a moving average over augmented batches of weights that kept changing. One
    forward pass of a copy of the trunk over every cube (cumulative averages, no gradient)
    gives the statistics of exactly what extraction will see. The training state is untouched.
    """
    trunk = copy.deepcopy(encoder.trunk)
    used = trunk.features[: encoder.upto + 1]
    norms = [m for m in used.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    trunk.train()
    device = next(trunk.parameters()).device
    n = len(cubes)
    if norms:
        for start in range(0, n, batch_size):
            x = resample_cubes(_read(cubes, np.arange(start, min(start + batch_size, n))), size).unsqueeze(1)
            if input_range == "-1_1":
                x = x * 2.0 - 1.0
            trunk.forward_features(x.to(device), encoder.upto)
    for m in norms:
        m.momentum = 0.1
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in trunk.state_dict().items()}


def _save_weights(path: Path, trunk_state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Trunk weights under the keys VGG3D has (``features.N.*``), so the strict loader takes them."""
    _atomic_torch_save({"model_state_dict": trunk_state, PRETRAINING_KEY: metadata}, path)


def _save_history(path: Path, history: list[dict[str, float]]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).to_csv(tmp, index=False)


def read_history(out_dir: str | Path) -> pd.DataFrame:
    """The per-epoch history of the run in ``out_dir`` (for a notebook re-opened later)."""
    path = Path(out_dir).expanduser() / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no pretraining history in {path.parent}: run pretrain() with out_dir={path.parent}")
    return pd.read_csv(path)


def upto_for(method: str, layer_num: int) -> int | None:
    """The ``upto`` that trains what extraction uses: ``layer_num`` for stage_specific, else the whole trunk."""
    if method == "stage_specific":
        return resolve_upto(layer_num)
    if method == "standard":
        return None
    raise ValueError(f"extraction method must be standard or stage_specific, got {method!r}")


__all__ = [
    "HISTORY_FILE",
    "METHOD",
    "PRETRAINING_KEY",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "PretrainResult",
    "calibrated_trunk_state",
    "PretrainSettings",
    "pretrain",
    "read_history",
    "upto_for",
]

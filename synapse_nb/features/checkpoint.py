"""Loading VGG3D weights: the HemiBrain checkpoint checked key by key, or seeded random weights.

The layout (module indices, channel counts, key names) must match the HemiBrain checkpoint
exactly, because users load that file by path and refer to layers by index ("layer 20").
Every number describing the architecture is defined once here and derived elsewhere.

Two design rules come from the seed's failures:

* The classifier head holds ~115 M of the ~117 M parameters but is never needed for
  features, so it is only built when a checkpoint that contains it is loaded, or when a caller
  asks for it with ``num_classes=``.
* A checkpoint that does not fit is an error (:class:`CheckpointError`), never a silent
  fallback to random weights. Random weights are seeded and labelled as such in
  :class:`ModelInfo`, so reports can say so.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)
from ..core.errors import DataError
from ..core.layers import HEAD_LINEAR_INDICES, INPUT_RANGES, N_FEATURE_MODULES
from .vgg3d import VGG3D, init_random


# --------------------------------------------------------------------------- checkpoints
class CheckpointError(DataError):
    """A weights file that cannot be used as it is (wrong keys, shapes or content).

    A :class:`DataError` (and so a ``ValueError``): bad input, reported in one line.
    """


@dataclass(frozen=True)
class ModelInfo:
    """Where the weights came from; every report that shows features should quote it."""

    source: str
    seed: int | None
    has_head: bool
    num_classes: int | None
    pretrained: bool
    default_input_range: str
    #: the training record of weights made by synapse_nb's self-supervised pretraining
    #: (``synapse_nb.training``), None for any other weights
    pretraining: Mapping[str, Any] | None = field(default=None, hash=False)

    def description(self) -> str:
        """One sentence for reports, e.g. 'RANDOM weights (seed 42) — features are not ...'."""
        if self.pretraining is not None:
            return _pretraining_description(self.pretraining, self.source, self.default_input_range)
        if not self.pretrained:
            return f"RANDOM weights (seed {self.seed}) — features are not from a trained network"
        head = f"with a {self.num_classes}-class head" if self.has_head else "trunk only, no head"
        rng = "[-1, 1]" if self.default_input_range == "-1_1" else "[0, 1]"
        return f"pretrained weights from {self.source} ({head}); default input range {rng}"


PRETRAINING_KEY = "synapse_nb_pretraining"
"""Key of the training record beside ``model_state_dict`` in weights written by ``synapse_nb.training``."""


def _pretraining_description(record: Mapping[str, Any], source: str, input_range: str) -> str:
    """'self-supervised weights (SimCLR, 25 epochs on 63 synapses of demo, loss 2.1) from ...'."""
    data = record.get("describe_data") or {}
    name = data.get("name") or data.get("dataset") if isinstance(data, Mapping) else None
    if not name and isinstance(data, Mapping) and data:
        name = ", ".join(f"{k} {v}" for k, v in list(data.items())[:3])
    of = f" of {name}" if name else ""
    method = str(record.get("method", "self-supervised")).split(" ")[0]
    loss = record.get("final_loss")
    loss_text = f", loss {float(loss):.3g}" if isinstance(loss, (int, float)) else ""
    upto = record.get("upto")
    trained = ""
    if isinstance(upto, int) and upto < N_FEATURE_MODULES - 1:
        trained = f"; trained up to features.{upto} (later layers keep random weights: extract at or before it)"
    rng = "[-1, 1]" if input_range == "-1_1" else "[0, 1]"
    return (
        f"self-supervised weights ({method}, {record.get('epochs_run', '?')} epochs on "
        f"{record.get('n_synapses', '?')} synapses{of}{loss_text}) from {source}{trained}; default input range {rng}"
    )


_WRAPPER_KEYS = ("model_state_dict", "state_dict")
_DP_PREFIX = "module."


def _missing_file_message(path: Path) -> str:
    return (
        f"checkpoint not found: {path}. Give the path to the HemiBrain checkpoint "
        "(hemibrain_production.checkpoint; it cannot be downloaded automatically), "
        "or pass weights_path=None to use seeded random weights (reports will say so)."
    )


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely (``weights_only=True``), unwrapped and with ``module.`` stripped."""
    return _load_with_record(path)[0]


def _load_with_record(path: str | Path) -> tuple[dict[str, torch.Tensor], Mapping[str, Any] | None]:
    """The state dict (see below) and the pretraining record beside it, if any.

    Read a state dict safely (``weights_only=True``) and normalise its layout.

    * A training checkpoint keeps the weights under ``model_state_dict`` (or ``state_dict``)
      next to optimizer state and epoch counters: the weights are unwrapped.
    * A model saved from ``nn.DataParallel`` prefixes every key with ``module.``: the prefix
      is stripped so the keys read ``features.N.*`` / ``classifier.N.*``.

    ``weights_only=True`` refuses pickled code, so an untrusted file cannot run anything.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(_missing_file_message(path))
    _check_file_kind(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} could not be loaded with weights_only=True (safe mode): {_one_line(exc)}. The file must "
            "be a plain state dict (or a dict holding one under 'model_state_dict'); whole "
            "pickled models or custom objects are refused on purpose."
        ) from exc
    except Exception as exc:  # corrupt / truncated torch file
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {_one_line(exc)}); "
            "the file may be truncated or damaged: download it again or use another one"
        ) from exc
    record = obj.get(PRETRAINING_KEY) if isinstance(obj, Mapping) else None
    if record is not None and not isinstance(record, Mapping):
        logger.warning("%s: ignoring the %r entry, which is not a dict", path, PRETRAINING_KEY)
        record = None
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not contain a state dict (found {type(obj).__name__})")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state "
                f"dict (optionally under {' or '.join(repr(k) for k in _WRAPPER_KEYS)})"
            )
        if key.startswith(_DP_PREFIX):
            key = key[len(_DP_PREFIX):]
        state[key] = value
    check_finite(state, str(path))
    return state, record


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"  # legacy torch.save format: a pickle (protocol >= 2)
_FINITE_CHUNK = 1 << 24  # elements checked at a time, so a 100M-element head needs no 100 MB mask


def _one_line(exc: BaseException) -> str:
    """The gist of an exception in one line (torch's messages run over many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return repr(exc)
    for ln in lines:  # torch's weights_only refusal puts the reason on this line
        if ln.startswith("WeightsUnpickler error"):
            return ln
    return lines[0]


def _check_file_kind(path: Path) -> None:
    """Refuse, in one line, files that cannot be a torch checkpoint: empty, text, HTML."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}; check its permissions") from exc
    if not head:
        raise CheckpointError(
            f"{path} is empty (0 bytes), not a torch checkpoint; the download or copy probably failed: "
            "fetch the HemiBrain checkpoint again"
        )
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC):
        return
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text:
        what = "an HTML page (a download link saved by a browser?)"
    elif text.startswith(b"version https://git-lfs"):
        what = "a Git LFS pointer (a text file; run 'git lfs pull' to fetch the real file)"
    elif b"\x00" not in head:
        try:
            head.decode("utf-8")
            what = "a text file"
        except UnicodeDecodeError as exc:
            what = "a text file" if exc.start > len(head) - 4 else "a file of an unknown format"
    else:
        what = "a file of an unknown format"
    raise CheckpointError(
        f"{path} is not a torch checkpoint: it looks like {what} (size {path.stat().st_size} bytes); "
        "give the path of the HemiBrain checkpoint file itself (hemibrain_production.checkpoint)"
    )


def check_finite(
    state: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    advice: str = "the checkpoint is corrupt, use another one",
) -> None:
    """Raise :class:`CheckpointError` naming the first tensor that holds NaN or inf.

    Such weights give NaN features, or all-zero ones where the fused convolution + ReLU of the
    inference trunk turns NaN into 0, which look like a success and crash the reductions
    downstream; so weights holding them are refused outright.
    """
    for key, value in state.items():
        if not (value.is_floating_point() or value.is_complex()):
            continue
        flat = value.detach().reshape(-1)
        for start in range(0, flat.numel(), _FINITE_CHUNK):
            if not bool(torch.isfinite(flat[start : start + _FINITE_CHUNK]).all()):
                raise CheckpointError(f"{source}: weight {key} holds NaN/inf values; {advice}")


def _num_classes_from_state(state: Mapping[str, torch.Tensor]) -> int | None:
    """Class count read from the last Linear of the head, or None if there is no head."""
    last = f"classifier.{HEAD_LINEAR_INDICES[-1]}.weight"
    if last in state:
        return int(state[last].shape[0])
    if any(k.startswith("classifier.") for k in state):
        # a head with a different layout: the strict key check will list what is wrong
        weights = sorted(
            (k for k in state if k.startswith("classifier.") and k.endswith(".weight") and state[k].ndim == 2),
            key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else -1,
        )
        return int(state[weights[-1]].shape[0]) if weights else None
    return None


def _short_list(items: list[str], limit: int = 12) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items) - limit} more, {len(items)} in total)"


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state`` fits ``model`` key for key and shape for shape.

    BatchNorm ``num_batches_tracked`` counters are the one exception: they do not influence
    inference and older checkpoints lack them, so their absence is tolerated.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint {source} does not fit the VGG3D layout of the HemiBrain checkpoint: "
            f"{len(missing)} missing key(s): {_short_list(missing)}; "
            f"{len(unexpected)} unexpected key(s): {_short_list(unexpected)}; "
            f"{len(mismatched)} shape mismatch(es): {_short_list(mismatched, 6)}. "
            "Refusing to fall back to random weights."
        )


def _record_input_range(record: Mapping[str, Any] | None, path: Path) -> str:
    """[-1, 1] for HemiBrain-style checkpoints; what pretraining used for synapse_nb's own weights."""
    if record is None:
        return "-1_1"
    value = record.get("input_range", "0_1")
    if value not in INPUT_RANGES:
        raise CheckpointError(f"{path}: {PRETRAINING_KEY}.input_range is {value!r}, expected one of {INPUT_RANGES}")
    return str(value)


def build_model(
    weights_path: str | Path | None = None,
    seed: int = 42,
    num_classes: int | None = None,
    *,
    warn_random: bool = True,
) -> tuple[VGG3D, ModelInfo]:
    """Build VGG3D in eval mode, from a checkpoint or from seeded random weights.

    * ``weights_path`` given: strict load; the head is built iff the file contains one, and
      its class count is read from the file (``num_classes``, if given, must agree).
    * ``weights_path=None``: random weights from ``seed``; no head unless ``num_classes``.
    """
    if weights_path is None:
        # allocated uninitialised, then filled from a local generator only: deterministic
        # for a seed and the global torch RNG is not advanced
        with torch.device("meta"):
            model = VGG3D(num_classes=num_classes)
        model.to_empty(device="cpu")
        init_random(model, seed)
        info = ModelInfo(
            source="random",
            seed=int(seed),
            has_head=model.has_head,
            num_classes=model.num_classes,
            pretrained=False,
            default_input_range="0_1",
        )
        if warn_random:  # pretraining starts from random weights on purpose and says so itself
            logger.warning("VGG3D uses %s", info.description())
    else:
        path = Path(weights_path).expanduser()
        state, record = _load_with_record(path)
        file_classes = _num_classes_from_state(state)
        if num_classes is not None and file_classes != num_classes:
            raise CheckpointError(
                f"num_classes={num_classes} was asked for but {path} has "
                + (f"a {file_classes}-class head" if file_classes else "no classifier head")
            )
        # Built on the meta device and then given the file's tensors (assign=True): the 100M
        # head parameters are neither initialised nor allocated twice.
        with torch.device("meta"):
            model = VGG3D(num_classes=file_classes)
        check_state_dict(model, state, str(path))
        full: dict[str, torch.Tensor] = {}
        for key, ref in model.state_dict().items():
            value = state.get(key)
            if value is None:  # a tolerated missing num_batches_tracked counter
                value = torch.zeros((), dtype=ref.dtype)
            full[key] = value.to(ref.dtype).contiguous()
        model.load_state_dict(full, strict=True, assign=True)
        info = ModelInfo(
            source=str(path),
            seed=None,
            has_head=model.has_head,
            num_classes=model.num_classes,
            pretrained=True,
            default_input_range=_record_input_range(record, path),
            pretraining=dict(record) if record is not None else None,
        )
        logger.info("VGG3D loaded: %s", info.description())
    model.eval()
    model.info = info
    return model, info

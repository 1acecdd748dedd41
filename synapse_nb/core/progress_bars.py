"""Progress bars that behave in a terminal, in JupyterLab and in batch runs.

Batch runs (the runner sets ``SYNAPSE_NB_BATCH=1`` for its kernels) report progress per
notebook in the terminal instead, so bars inside executed notebooks would only clutter the
exported HTML and are switched off there.
"""
from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
BATCH_ENV = "SYNAPSE_NB_BATCH"


def in_batch() -> bool:
    """True inside a notebook executed by the runner."""
    return os.environ.get(BATCH_ENV) == "1"


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", enabled: bool = True, **kw) -> tqdm:
    """A tqdm bar, disabled when ``enabled`` is False or in batch runs."""
    return tqdm(iterable, total=total, desc=desc, disable=(not enabled) or in_batch(), **kw)

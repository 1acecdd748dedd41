"""Which synapses a run builds: sampling policies over a synapse table.

A stage between ``data`` (which reads the table) and ``cubes`` (which builds the sampled
synapses); it imports only ``core`` and ``data``.

- ``policies``: :class:`SamplePlan` (all, random, stratified, per_axon; regions of interest),
  :func:`sample_synapses` and its :class:`SampleResult`.
"""

from __future__ import annotations

from .policies import (
    POLICIES,
    PRE_COLUMN,
    ROW_COLUMN,
    STRATUM_COLUMN,
    SUMMARY_COLUMNS,
    SamplePlan,
    SampleResult,
    sample_synapses,
)

__all__ = [
    "POLICIES",
    "PRE_COLUMN",
    "ROW_COLUMN",
    "STRATUM_COLUMN",
    "SUMMARY_COLUMNS",
    "SamplePlan",
    "SampleResult",
    "sample_synapses",
]

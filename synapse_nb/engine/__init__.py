"""Run partitions of a large job (a connectome's synapses) on Dask or in this process:
cluster set-up (local, scheduler address, SLURM / PBS / LSF), locality-ordered batches,
a partition store whose parts are each written exactly once, and the resumable executor.

Generic over what a partition computes; it knows nothing of runs (never imports pipeline or ui).
"""

from __future__ import annotations

from .cluster import (
    JOBQUEUE_KINDS,
    SCHEDULER_KINDS,
    ClusterSpec,
    TorchThreads,
    dashboard_link,
    jobqueue_script,
    open_client,
)
from .execute import EngineReport, clear_worker_cache, run_partitions, worker_cached
from .locality import (
    batch_chunk_reads,
    chunks_touched,
    locality_order,
    morton_codes,
    plan_batches,
)
from .partitions import PartitionStore, part_name

__all__ = [
    "JOBQUEUE_KINDS",
    "SCHEDULER_KINDS",
    "ClusterSpec",
    "EngineReport",
    "PartitionStore",
    "TorchThreads",
    "batch_chunk_reads",
    "chunks_touched",
    "clear_worker_cache",
    "dashboard_link",
    "jobqueue_script",
    "locality_order",
    "morton_codes",
    "open_client",
    "part_name",
    "plan_batches",
    "run_partitions",
    "worker_cached",
]

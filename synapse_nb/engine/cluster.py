"""Where the partitions run: a local cluster of worker processes, a running Dask scheduler, or
batch jobs on an HPC queue (SLURM, PBS, LSF via dask-jobqueue).

A :class:`ClusterSpec` says which, and :func:`open_client` starts it and stops what it started.
Every worker limits torch (and OpenMP / MKL) to its own thread count: two workers with torch's
default of one thread per core each would otherwise fight over the same cores.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["JOBQUEUE_KINDS", "SCHEDULER_KINDS", "ClusterSpec", "TorchThreads", "dashboard_link",
           "jobqueue_script", "open_client"]

log = logging.getLogger(__name__)

JOBQUEUE_KINDS = ("slurm", "pbs", "lsf")
SCHEDULER_KINDS = ("local", *JOBQUEUE_KINDS, "tcp://host:port", "tls://host:port")
_ADDRESS = re.compile(r"^(tcp|tls)://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# options of the jobqueue cluster classes themselves (the job classes take the rest)
_CLUSTER_OPTIONS = {"security", "shared_temp_directory", "silence_logs", "name", "scheduler_options",
                    "interface", "protocol", "config_name"}
_SPEC_OWNED = {"n_workers", "job_cls", "loop", "asynchronous", "scheduler", "dashboard_address", "host"}


def _jobqueue_class(kind: str) -> type:
    import dask_jobqueue

    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
            "lsf": dask_jobqueue.LSFCluster}[kind]


def _jobqueue_options(kind: str) -> set[str]:
    from dask_jobqueue.core import Job

    cls = _jobqueue_class(kind)
    names = set(inspect.signature(cls.job_cls.__init__).parameters) | set(inspect.signature(Job.__init__).parameters)
    return (names | _CLUSTER_OPTIONS) - {"self", "scheduler", "base_class_kwargs"} - _SPEC_OWNED


@dataclass(frozen=True)
class ClusterSpec:
    """Which Dask cluster runs the partitions.

    ``scheduler``: ``"local"`` (worker processes on this machine), ``"slurm"`` / ``"pbs"`` /
    ``"lsf"`` (batch jobs via dask-jobqueue) or the address of a running scheduler
    (``tcp://host:8786``, ``tls://...``). ``n_workers``: local worker processes or batch jobs.
    ``memory_per_worker``: e.g. ``"4GiB"`` (local: the worker's memory limit; jobqueue: the
    job's ``memory`` unless ``jobqueue`` gives one). ``jobqueue``: options of the jobqueue
    cluster class (cores, memory, processes, walltime, queue, account, job_extra_directives,
    local_directory, interface, ...); ``cores`` defaults to ``threads_per_worker``.
    """

    scheduler: str = "local"
    n_workers: int = 2
    threads_per_worker: int = 1
    memory_per_worker: str | None = None
    jobqueue: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = self.kind  # validates the scheduler
        if not isinstance(self.n_workers, int) or isinstance(self.n_workers, bool) or self.n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, got {self.n_workers!r}")
        if (not isinstance(self.threads_per_worker, int) or isinstance(self.threads_per_worker, bool)
                or self.threads_per_worker < 1):
            raise ValueError(f"threads_per_worker must be a positive integer, got {self.threads_per_worker!r}")
        if self.memory_per_worker is not None:
            from dask.utils import parse_bytes

            try:
                parse_bytes(self.memory_per_worker)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"memory_per_worker {self.memory_per_worker!r} is not a size such as '4GiB'") from exc
        if not isinstance(self.jobqueue, Mapping):
            raise TypeError(f"jobqueue must be a mapping of options, got {type(self.jobqueue).__name__}")
        object.__setattr__(self, "jobqueue", dict(self.jobqueue))
        if self.jobqueue and kind != "jobqueue":
            raise ValueError(f"jobqueue options are only used with scheduler {'/'.join(JOBQUEUE_KINDS)}, "
                             f"not {self.scheduler!r}; drop them or change the scheduler")
        if kind == "jobqueue":
            known = _jobqueue_options(self.scheduler)
            unknown = sorted(set(self.jobqueue) - known)
            if unknown:
                raise ValueError(f"unknown {self.scheduler} jobqueue option(s) {unknown}; known: {sorted(known)}"
                                 + (" (n_workers is set on the ClusterSpec itself)" if "n_workers" in unknown else ""))

    @property
    def kind(self) -> str:
        """``"local"``, ``"jobqueue"`` or ``"address"``."""
        if not isinstance(self.scheduler, str):
            raise TypeError(f"scheduler must be a string, one of {', '.join(SCHEDULER_KINDS)}; got {self.scheduler!r}")
        if self.scheduler == "local":
            return "local"
        if self.scheduler in JOBQUEUE_KINDS:
            return "jobqueue"
        if "://" in self.scheduler:
            m = _ADDRESS.match(self.scheduler)
            if m is None or not 0 < int(m.group(3)) < 65536:
                raise ValueError(f"scheduler address {self.scheduler!r} must look like tcp://host:port or tls://host:port")
            return "address"
        raise ValueError(f"unknown scheduler {self.scheduler!r}; use one of {', '.join(SCHEDULER_KINDS)}")

    def jobqueue_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the jobqueue cluster class: the spec's sizes as defaults,
        the ``jobqueue`` mapping on top."""
        if self.kind != "jobqueue":
            raise ValueError(f"scheduler {self.scheduler!r} is not a batch queue ({', '.join(JOBQUEUE_KINDS)})")
        opts: dict[str, Any] = {"cores": self.threads_per_worker, "processes": 1}
        if self.memory_per_worker is not None:
            opts["memory"] = self.memory_per_worker
        opts.update(self.jobqueue)
        if "memory" not in opts:
            raise ValueError(f"a {self.scheduler} job needs a memory size: set memory_per_worker (e.g. '4GiB') "
                             f"or jobqueue.memory")
        return opts


class TorchThreads(WorkerPlugin):
    """Limit torch / OpenMP / MKL in a worker process to that worker's thread count.

    The environment variables decide the pools of libraries imported later (torch reads
    OMP_NUM_THREADS when it loads); torch loaded already is set directly.
    """

    name = "synapse-nb-torch-threads"

    def __init__(self, n_threads: int | None = None) -> None:
        self.n_threads = n_threads  # None: the worker's own nthreads

    def setup(self, worker: Any) -> None:
        n = int(self.n_threads or worker.state.nthreads or 1)
        limit_threads(n)


_THREAD_LIMIT: int | None = None


def limit_threads(n: int) -> None:
    """Set the thread limit of this process (environment for later imports, torch if loaded)."""
    global _THREAD_LIMIT
    _THREAD_LIMIT = int(n)
    for var in _THREAD_ENV:
        os.environ[var] = str(n)
    enforce_thread_limit()


def enforce_thread_limit() -> None:
    """Re-apply the process's thread limit to torch when torch was imported meanwhile."""
    if _THREAD_LIMIT is None or "torch" not in sys.modules:
        return
    torch = sys.modules["torch"]
    if torch.get_num_threads() != _THREAD_LIMIT:
        torch.set_num_threads(_THREAD_LIMIT)


@contextlib.contextmanager
def open_client(spec: ClusterSpec) -> Iterator[Client]:
    """A Dask client for ``spec``; on exit closes the client and the cluster it started
    (a scheduler given by address belongs to someone else and is left running)."""
    from distributed import Client, LocalCluster

    kind = spec.kind
    cluster = None
    if kind == "local":
        env = {var: str(spec.threads_per_worker) for var in _THREAD_ENV}
        cluster = LocalCluster(n_workers=spec.n_workers, threads_per_worker=spec.threads_per_worker,
                               processes=True, memory_limit=spec.memory_per_worker or "auto",
                               dashboard_address="127.0.0.1:0", host="127.0.0.1",
                               silence_logs=logging.WARNING, env=env)
        client = Client(cluster)
    elif kind == "jobqueue":
        cluster = _jobqueue_class(spec.scheduler)(**spec.jobqueue_kwargs())
        cluster.scale(jobs=spec.n_workers)
        client = Client(cluster)
    else:
        client = Client(spec.scheduler)
    try:
        client.register_plugin(TorchThreads(), name=TorchThreads.name)
        link = dashboard_link(client)
        log.info("Dask %s cluster ready%s", spec.scheduler, f"; dashboard: {link}" if link else "")
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def dashboard_link(client: Client) -> str | None:
    """The address of the Dask dashboard, or None when the scheduler serves none (bokeh missing)."""
    try:
        info = client.scheduler_info()
        if "dashboard" not in info.get("services", {}):
            return None
        return str(client.dashboard_link)
    except Exception:  # noqa: BLE001 - a missing dashboard must never stop a run
        return None


def jobqueue_script(spec: ClusterSpec) -> str:
    """The batch script dask-jobqueue would submit for one job of ``spec``, without submitting
    anything (a throwaway local scheduler is started and stopped to fill in its address)."""
    opts = spec.jobqueue_kwargs()
    sched = dict(opts.pop("scheduler_options", None) or {})
    sched.setdefault("dashboard_address", ":0")
    cluster = _jobqueue_class(spec.scheduler)(scheduler_options=sched, **opts)
    try:
        return str(cluster.job_script())
    finally:
        cluster.close()

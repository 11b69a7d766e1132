"""Where a sweep's runs execute: in this process, or on a Dask distributed cluster.

Every backend takes the same runs and yields the same records, in the order
they finish; :func:`migengine.sweeps.sweep` sorts them back into grid order.

* ``"serial"``: one after another in this process.
* ``None``: a ``dask.distributed.LocalCluster`` started here and closed after:
  one worker process per core, one thread each, with ``NUMBA_NUM_THREADS=1``
  (and the BLAS/OpenMP pools at 1) in each worker's environment, so that
  workers never oversubscribe the cores.
* a ``dask.distributed.Client``: its cluster, wherever that runs.

Before any task, every worker loads the kernels once (:func:`sweep_grid.warm`).
A local cluster's workers load them together from this machine's numba cache,
which this process first fills unless a marker says an earlier warm of the same
config did (:func:`sweep_grid.cached`). On a given cluster, which may not share
this cache, the first worker loads or compiles them alone, then the rest, since
concurrent numba cache writes can collide (numba issue #4807). A task that raises, or whose
worker dies, becomes a failed record; the others go on.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from migengine.sim_config import SimConfig
from migengine.sweep_grid import Run, TraceSpec, cached, run_one, run_record, warm
from migengine.trace import Trace

#: Environment of a local cluster's workers: one numba thread, one BLAS/OpenMP thread.
WORKER_ENV = {
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
#: Seconds to wait for a scheduler given by address before giving up.
CONNECT_TIMEOUT_S = 10


def run_serial(
    runs: Sequence[Run], traces: Sequence[Trace | TraceSpec], names: Sequence[str]
) -> Iterator[dict[str, Any]]:
    for run in runs:
        yield run_one(run, traces[run.trace], names[run.trace])


def local_cluster(workers: int | None = None) -> Any:
    """A LocalCluster of one single-threaded worker process per core (or ``workers``)."""
    import logging

    from dask.distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    return LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        env=dict(WORKER_ENV),
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )


def connect(address: str) -> Any:
    """A Client of the scheduler at ``address``; ValueError if it cannot be reached."""
    from dask.distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ValueError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from None


def warm_workers(client: Any, base: SimConfig, cache_filled: bool, own: bool = False) -> None:
    """Load the kernels on every worker: all together when this machine's numba
    cache, which they read, is filled (a local cluster), else the first worker
    alone (it may compile and write the cache), then the others. ``own``: the
    workers are this sweep's alone, so they also freeze what they loaded."""
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise ValueError("the Dask cluster has no workers")
    task = warm_own_worker if own else warm
    if not cache_filled:
        client.run(task, base, workers=workers[:1])
        workers = workers[1:]
    if workers:
        client.run(task, base, workers=workers)


def warm_own_worker(base: SimConfig) -> float:
    """:func:`warm`, then move everything loaded out of the garbage collector's
    reach: a worker of this sweep's own cluster exits with it, and its final
    collection would scan the loaded kernels' objects (0.3 s of a 0.7 s exit).
    """
    seconds = warm(base)
    gc.freeze()
    return seconds


def run_on_client(
    client: Any,
    runs: Sequence[Run],
    traces: Sequence[Trace | TraceSpec],
    names: Sequence[str],
    base: SimConfig,
    cache_filled: bool = False,
    own: bool = False,
) -> Iterator[dict[str, Any]]:
    """Each run one Dask task; records as the tasks finish."""
    from dask.distributed import as_completed

    warm_workers(client, base, cache_filled, own)
    # A Trace goes to every worker once, not once per task; a spec is built by each task.
    shipped = [client.scatter(t, broadcast=True) if isinstance(t, Trace) else t for t in traces]
    futures = {}
    for run in runs:
        fut = client.submit(run_one, run, shipped[run.trace], names[run.trace], pure=False)
        futures[fut] = run
    for fut in as_completed(futures):
        run = futures[fut]
        try:
            yield fut.result()
        except Exception as exc:  # noqa: BLE001 - a lost worker fails its runs, not the sweep
            yield run_record(run, names[run.trace], exc)
        fut.release()


def execute(
    client: Any,
    runs: Sequence[Run],
    traces: Sequence[Trace | TraceSpec],
    names: Sequence[str],
    base: SimConfig,
    on_record: Callable[[dict[str, Any]], None],
) -> None:
    """Run ``runs`` on ``client`` (``"serial"``, None or a Client); each record to ``on_record``."""
    if not runs:
        return
    # The runs of one trace in a row: a process generates a synthetic trace once
    # for them (TraceSpec.load); the records are put back in grid order later.
    runs = sorted(runs, key=lambda run: run.trace)
    if isinstance(client, str) and client == "serial":
        for record in run_serial(runs, traces, names):
            on_record(record)
        return
    if client is None:
        # Fill this machine's numba cache first, unless a marker says it is filled, so
        # that local workers only load it. A given cluster's workers warm themselves
        # (run_on_client): its machines may not share this cache.
        if not cached(base):
            warm(base)
        with local_cluster() as cluster:
            from dask.distributed import Client

            with Client(cluster) as own:
                for record in run_on_client(own, runs, traces, names, base, True, True):
                    on_record(record)
        return
    for record in run_on_client(client, runs, traces, names, base):
        on_record(record)

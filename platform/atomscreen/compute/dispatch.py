"""The only Dask code: the cluster of a run (a LocalCluster by default, or an existing scheduler), sending jobs with
their models to the workers, collecting results as they complete, and chunked maps (reference matching)."""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from atomscreen.campaign import ClusterSpec
from atomscreen.compute.tasks import TASKS, ModelRef
from atomscreen.jobs import Job, worker_models


@dataclass
class Cluster:
    """The Dask client of a run: ``client`` if given, else opened on first use (and closed by :meth:`close`)."""

    spec: ClusterSpec = field(default_factory=ClusterSpec)
    scheduler: str | None = None
    dashboard_address: str = ":8787"
    client: Any = None
    on_open: Callable[[str], None] = lambda dashboard: None
    _local: Any = None
    _opened: bool = False
    _dashboard: str | None = None

    def get(self):
        """The connected client (a LocalCluster of worker processes unless a scheduler address is given)."""
        if self.client is None:
            from distributed import Client

            address = self.scheduler or self.spec.scheduler
            if address:
                self.client = Client(address, timeout="30s", security=_security(address, self.spec))
            else:
                self._local = _local_cluster(self.spec, self.dashboard_address)
                self.client = Client(self._local)
            self._opened = True
        if self._dashboard is None:
            self._dashboard = self.client.dashboard_link
            self.on_open(self._dashboard)
        return self.client

    @property
    def dashboard(self) -> str | None:
        """The dashboard URL, once the client was used."""
        return self._dashboard

    def has_gpu_workers(self) -> bool:
        workers = self.get().scheduler_info(n_workers=-1).get("workers", {})
        return any(w.get("resources", {}).get("GPU", 0) > 0 for w in workers.values())

    def close(self) -> None:
        """Close what this object opened (a client handed in stays open)."""
        if self._opened:
            self.client.close()
            if self._local is not None:
                self._local.close()


def _security(address: str, spec: ClusterSpec):
    """TLS credentials for a tls:// address: cluster.tls, else Dask's configuration (distributed.comm.tls.*); None
    (Dask's default) for other schemes."""
    if not address.startswith("tls://"):
        return None
    from distributed.security import Security

    from atomscreen.compute.progress import RunnerError

    if spec.tls is not None:
        return Security(tls_ca_file=spec.tls.ca_file, tls_client_cert=spec.tls.cert, tls_client_key=spec.tls.key,
                        require_encryption=True)
    security = Security()
    if not security.tls_ca_file:
        raise RunnerError(f"{address} is a TLS scheduler: give cluster.tls {{ca_file, cert, key}} in the campaign, or "
                          "Dask's DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ..._CLIENT__CERT and ..._CLIENT__KEY")
    return security


def check_scheduler(address: str | None) -> None:
    """A scheduler address that accepts TCP connections; said at once (a Dask client would try for 30 s), before
    anything is recorded."""
    if not address or not address.startswith(("tcp://", "tls://", "ws://", "wss://")):
        return
    import socket

    from atomscreen.compute.progress import RunnerError

    host, _, port = address.split("://", 1)[1].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise RunnerError(f"cannot reach the Dask scheduler at {address} ({reason}); start it, or leave out "
                          "cluster.scheduler / --scheduler to run a local cluster") from None


def check_gpus(spec: ClusterSpec) -> None:
    """``cluster.gpus: N`` needs N CUDA devices here (a local cluster); said before anything is recorded."""
    if not spec.gpus or spec.scheduler:
        return
    import torch

    from atomscreen.compute.progress import RunnerError

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < spec.gpus:
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device or driver is visible"
        raise RunnerError(
            f"cluster.gpus = {spec.gpus}, but this machine has {found} CUDA device{'s' if found != 1 else ''} "
            f"(torch {torch.__version__}: {why}); remove cluster.gpus to run on the CPU, "
            + (f"set it to at most {found}, " if found else "")
            + "or give cluster.scheduler of a cluster with GPU workers")


def _local_cluster(spec: ClusterSpec, dashboard_address: str):
    """A LocalCluster, or with ``gpus`` one worker per GPU: dask-cuda's LocalCUDACluster where installed (each worker
    sees its own device), else a LocalCluster whose worker k takes cuda:k (compute.workers.device)."""

    options = _local_options(spec, dashboard_address)
    with _workers_ignore_sigint():
        return _start_local(spec, options)


@contextmanager
def _workers_ignore_sigint():
    """Worker processes started inside inherit SIGINT ignored (Python keeps an ignored SIGINT ignored), so Ctrl-C
    reaches the driver alone, which stops them, instead of printing a traceback from every worker."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_local(spec: ClusterSpec, options: dict[str, Any]):
    from distributed import LocalCluster

    if spec.gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            return LocalCluster(**options)
        options.pop("processes")
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=list(range(spec.gpus)), **options)
    return LocalCluster(**options)


LOOPBACK = "127.0.0.1"  # a local cluster's scheduler, workers and dashboard listen here only


def loopback_address(address: str) -> str:
    """``:PORT`` (no host) bound to the loopback interface; an address that names its host is kept as given."""
    return f"{LOOPBACK}{address}" if address.startswith(":") else address


def _local_options(spec: ClusterSpec, dashboard_address: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"threads_per_worker": spec.threads_per_worker, "processes": True,
                              "host": LOOPBACK, "dashboard_address": loopback_address(dashboard_address),
                              "silence_logs": logging.ERROR}
    if spec.gpus:
        kwargs.update(n_workers=spec.gpus, resources={"GPU": 1})
    elif spec.n_workers:
        kwargs["n_workers"] = spec.n_workers
    return kwargs


def _model(ref: ModelRef) -> ModelRef:
    return ref


def run_jobs(cluster: Cluster, jobs: Sequence[tuple[Any, str, Job]], models: dict[str, ModelRef],
             on_result: Callable[[Any, Any], None], on_error: Callable[[Any, BaseException], None],
             tag: str = "") -> None:
    """Run ``jobs`` ((handle, key, job) triples) on the cluster; each job's model (by name) is scattered to every
    worker once. ``on_result(handle, result)`` or ``on_error(handle, exception)`` is called as each one completes."""
    from distributed import as_completed

    client = cluster.get()
    gpu = {"GPU": 1} if cluster.has_gpu_workers() else None
    used = sorted({name for _, _, job in jobs for name in worker_models(job)})
    # each model as a task's result, not scattered data: if every worker holding it dies, the scheduler computes it
    # again on a new worker instead of cancelling the tasks that need it
    shared = {name: client.submit(_model, models[name], key=f"model-{name}{tag}-{uuid.uuid4().hex[:8]}", pure=False)
              for name in used}
    futures = {}
    for handle, key, job in jobs:
        dask_key = f"{key.replace('/', '-')}{tag}-{uuid.uuid4().hex[:8]}"
        given = [shared[name] for name in worker_models(job)]  # model (and time model), or a polish denoiser
        futures[client.submit(TASKS[job.kind], job, *given, key=dask_key, resources=gpu)] = handle
    for future in as_completed(futures):
        handle = futures[future]
        try:
            result = future.result()
        except Exception as exc:  # the task raised on its worker, or its workers died
            on_error(handle, exc)
        else:
            on_result(handle, result)
        future.release()


def map_chunks(client, func: Callable, items: Sequence, shared: Any, *args: Any, chunk: int = 8,
               tag: str = "map") -> list:
    """``func(items[i:i+chunk], shared, *args)`` for every chunk on the client's workers (``shared`` sent once to
    each); the chunks' results concatenated in order."""
    handle = client.scatter(shared, broadcast=True, hash=False)
    futures = [client.submit(func, items[start:start + chunk], handle, *args,
                             key=f"{tag}-{start}-{uuid.uuid4().hex[:6]}")
               for start in range(0, len(items), chunk)]
    return [x for future in futures for x in future.result()]


def map_with_driver(client, func: Callable, argument_lists: Sequence[tuple]) -> list:
    """``[func(*args) for args in argument_lists]``, the last one computed here while the workers take the others
    (the driver would otherwise wait idle); the same results as the serial loop, in order."""
    *remote, last = argument_lists or [None]
    if last is None:
        return []
    futures = [client.submit(func, *args, key=f"{func.__name__}-{uuid.uuid4().hex[:8]}", pure=False)
               for args in remote]
    mine = func(*last)
    return [future.result() for future in futures] + [mine]


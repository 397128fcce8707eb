"""The Dask cluster a campaign runs on: a LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from distributed import Client, LocalCluster

from atomscreen.campaign import ClusterSpec


@dataclass
class ClusterHandle:
    """A connected client; ``close`` also stops a LocalCluster we started."""

    client: Client
    cluster: LocalCluster | None

    @property
    def dashboard_link(self) -> str:
        return self.client.dashboard_link

    def has_gpu_workers(self) -> bool:
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return any(w.get("resources", {}).get("GPU", 0) > 0 for w in workers.values())

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def open_cluster(spec: ClusterSpec, scheduler: str | None = None, *, dashboard_address: str = ":8787") -> ClusterHandle:
    """Connect to ``scheduler`` (or spec.scheduler); otherwise start a LocalCluster of worker processes."""
    address = scheduler or spec.scheduler
    if address:
        return ClusterHandle(Client(address, timeout="30s"), None)
    kwargs: dict[str, Any] = {"threads_per_worker": spec.threads_per_worker, "processes": True,
                              "dashboard_address": dashboard_address, "silence_logs": logging.ERROR}
    if spec.gpus:
        kwargs.update(n_workers=spec.gpus, resources={"GPU": 1})
    elif spec.n_workers:
        kwargs["n_workers"] = spec.n_workers
    cluster = LocalCluster(**kwargs)
    return ClusterHandle(Client(cluster), cluster)

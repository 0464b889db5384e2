"""Collector ``memory``: the memory that decides whether a pre-warm fits.

MemAvailable of the node, and the memory cgroup this process is charged to (v1 or v2):
its usage, its own limit (absent when unlimited) and the headroom left under the tightest
limit up the visible hierarchy (a pod's limit may sit a level above the container's).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import Metric

from exporter.collectors.base import gauge
from exporter.linux.memcg import find_memory_cgroup
from exporter.linux.meminfo import MEMINFO, mem_available_bytes


class MemoryCollector:
    name = "memory"

    def __init__(
        self,
        meminfo: Path = MEMINFO,
        proc_self: Path = Path("/proc/self"),
        sysroot: Path = Path("/"),
    ) -> None:
        self.meminfo = meminfo
        self.proc_self = proc_self
        self.sysroot = sysroot

    def collect(self) -> Iterator[Metric]:
        available = gauge(
            "pagewarm_memory_available_bytes", "MemAvailable of the node (/proc/meminfo)."
        )
        available.add_metric([], mem_available_bytes(self.meminfo))
        yield available
        cgroup = find_memory_cgroup(self.proc_self, self.sysroot)
        if cgroup is None:
            return
        usage = gauge(
            "pagewarm_memory_cgroup_usage_bytes",
            "Memory charged to this container's cgroup, page cache included.",
        )
        usage.add_metric([], cgroup.usage_bytes)
        yield usage
        if cgroup.limit_bytes is not None:
            limit = gauge(
                "pagewarm_memory_cgroup_limit_bytes",
                "Memory limit of this container's cgroup (absent when unlimited).",
            )
            limit.add_metric([], cgroup.limit_bytes)
            yield limit
        if cgroup.headroom_bytes is not None:
            headroom = gauge(
                "pagewarm_memory_cgroup_headroom_bytes",
                "Bytes that can still be charged before the tightest cgroup limit above this "
                "container is reached (absent when no limit applies).",
            )
            headroom.add_metric([], cgroup.headroom_bytes)
            yield headroom

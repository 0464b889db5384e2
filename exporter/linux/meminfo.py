"""/proc/meminfo: what the node can still give to the page cache."""

from __future__ import annotations

from pathlib import Path

from exporter.linux.kernelfile import read_kernel_text

MEMINFO = Path("/proc/meminfo")


def read_meminfo(path: Path = MEMINFO) -> dict[str, int]:
    """Fields of /proc/meminfo in bytes (the file says kB, meaning KiB)."""
    fields: dict[str, int] = {}
    for line in read_kernel_text(path).splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        value = int(parts[0])
        fields[name] = value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
    return fields


def mem_available_bytes(path: Path = MEMINFO) -> int:
    return read_meminfo(path)["MemAvailable"]

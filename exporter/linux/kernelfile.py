"""Reading the kernel's small text files (/proc, /sys, cgroupfs) cheaply.

A keep-warm pass reads a dozen of them (meminfo, PSI, the memory cgroup's limit and usage
at each level) every interval; pathlib's ``read_text`` builds a buffered text stream for
each, three times the cost of the open, read and close underneath.
"""

from __future__ import annotations

import os
from pathlib import Path

_CHUNK = 1 << 16


def read_kernel_text(path: Path | str) -> str:
    """The whole file as text (UTF-8); OSError as ``open`` and ``read`` raise it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):  # a pseudo-file is produced read by read
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()

"""The sample store: an append-only JSONL file, one sample per line (schema:
``exporter.samples``), shared by every process that records samples.

An append takes an exclusive flock, writes the whole line with O_APPEND and fsyncs before
unlocking, so concurrent writers (bench, sidecar, measure) never interleave and a sample
that ``append`` returned for is on disk. A writer killed mid-write leaves a torn last line
and no lock (the kernel drops it with the process): the next append first terminates that
line, so it is lost alone, skipped by readers as invalid, and never swallows the next
sample. Readers (``exporter.samples.SampleReader``) take no lock: a line is visible to them
once its newline is.

``check_writable`` answers before a measurement whether its sample could be appended (a
directory, a path under /proc, an empty setting, a read-only directory: one line, exit 2),
so that an hour of loads is not run into a store that refuses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable
from pathlib import Path

from controller.linux.durable import fsync_directory, write_all
from controller.writable import check_file
from exporter.errors import UserError
from exporter.samples import Sample, read_all


class SampleStoreError(UserError):
    """The sample store cannot take samples (checked before a measurement)."""


class SampleStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, sample: Sample) -> None:
        self.append_many([sample])

    def append_many(self, samples: Iterable[Sample]) -> None:
        """Append samples, one write per sample, fsync'd, under the exclusive lock."""
        lines = [s.to_json_line().encode() for s in samples]
        if not lines:
            return
        created = not self.path.exists()
        if created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # Read-write: the torn-line check reads the last byte (pread ignores O_APPEND).
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for line in lines:
                self._append_locked(fd, line)
        finally:
            os.close(fd)  # releases the lock
        if created:
            # The new store's directory entry too. Best effort: the samples themselves are
            # fsync'd, and some filesystems refuse to open or fsync a directory.
            with contextlib.suppress(OSError):
                fsync_directory(self.path.parent)

    def _append_locked(self, fd: int, line: bytes) -> None:
        if _ends_torn(fd):
            # A writer died mid-line: end its line so ours starts on a line of its own.
            line = b"\n" + line
        write_all(fd, line)
        os.fsync(fd)

    def read(self) -> list[Sample]:
        return read_all(self.path)

    def check_writable(self) -> None:
        """SampleStoreError unless a sample could be appended now (nothing left behind)."""
        check_file(self.path, "sample store", SampleStoreError)


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"

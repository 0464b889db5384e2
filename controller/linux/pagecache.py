"""Acting on the page cache of one open file: populate a range, drop the whole file."""

from __future__ import annotations

import errno
import os
from functools import cache

from exporter.linux.libc import libc, mapped, page_size, raise_errno

# Linux 5.14+. Python 3.11's mmap module lacks the constant; the value is fixed in the ABI.
MADV_POPULATE_READ = 22
# How a range of a file that was truncated meanwhile fails: madvise gives EFAULT (or ENOMEM
# past the mapping), a read gives 0 bytes, reported as EFAULT by read_through.
TRUNCATED_ERRNOS = frozenset({errno.EFAULT, errno.ENOMEM, errno.EINVAL})


def populate_read(fd: int, offset: int, length: int) -> None:
    """Fault [offset, offset+length) of ``fd`` into the page cache with one madvise call.

    The kernel reads with its readahead machinery and copies nothing to user space. A range
    past a file truncated meanwhile fails with EFAULT instead of raising SIGBUS."""
    with mapped(fd, offset, length) as addr:
        if libc().madvise(addr, length, MADV_POPULATE_READ) != 0:
            raise_errno("madvise(MADV_POPULATE_READ)")


def read_through(fd: int, offset: int, length: int, buffer: bytearray) -> None:
    """Read [offset, offset+length) into ``buffer`` (at least ``length`` bytes, reused by
    the caller): the bytes pass through the CPU, which matters on some VMs (see
    exporter.linux.hypervisor)."""
    view = memoryview(buffer)[:length]
    while view:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise OSError(errno.EFAULT, "file shrank while being read")
        view = view[n:]
        offset += n


def warm_range(fd: int, offset: int, length: int, buffer: bytearray | None) -> None:
    """Bring a range into the page cache: populate without a buffer, read through with one."""
    if buffer is None:
        populate_read(fd, offset, length)
    else:
        read_through(fd, offset, length, buffer)


@cache
def populate_supported() -> bool:
    """MADV_POPULATE_READ exists (EINVAL on kernels before 5.14): probe on a memfd page."""
    fd = os.memfd_create("pagewarm-probe", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, page_size())
        populate_read(fd, 0, page_size())
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def drop(fd: int) -> None:
    """Drop this file's clean pages from the page cache (no root needed, nothing else on
    the host touched). Dirty pages are flushed first, since DONTNEED skips them."""
    os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

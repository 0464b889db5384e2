"""statfs(2): which kind of filesystem holds a path, and whether it is a kernel pseudo-
filesystem (procfs, sysfs, cgroupfs...) that a walk for model weights must never enter.

Why statfs and not /proc/self/mountinfo: statfs answers for the path itself, in one
syscall, from the superblock that serves it. mountinfo answers for a device number, and a
file's st_dev is not always its mount's (btrfs subvolumes, overlayfs files report the
layer below); it needs /proc mounted and readable, which is the very filesystem in
question; and on a node with thousands of mounts it is a large file to parse. Only where
statfs cannot decide does the device's mount in mountinfo: devtmpfs and tmpfs share
TMPFS_MAGIC, and a statfs refused (a seccomp profile) says nothing.
"""

from __future__ import annotations

import ctypes
import os

from exporter.linux.libc import libc, raise_errno
from exporter.linux.mountinfo import read_mounts

TMPFS_MAGIC = 0x01021994

# Kernel interfaces that look like files (include/uapi/linux/magic.h; mqueue, configfs and
# fusectl from their fs/ sources). Their "files" are kernel state, other processes' views
# (/proc/<pid>/root is another root filesystem) or endless: never model storage.
PSEUDO_FILESYSTEMS: dict[int, str] = {
    0x9FA0: "proc",
    0x62656572: "sysfs",
    0x27E0EB: "cgroup",
    0x63677270: "cgroup2",
    0x64626720: "debugfs",
    0x74726163: "tracefs",
    0x73636673: "securityfs",
    0xCAFE4A11: "bpf",
    0x62656570: "configfs",
    0x6165676C: "pstore",
    0x19800202: "mqueue",
    0x1CD1: "devpts",
    0xDE5E81E4: "efivarfs",
    0xF97CFF8C: "selinuxfs",
    0x43415D53: "smackfs",
    0x5A3C69F0: "apparmorfs",
    0x42494E4D: "binfmt_misc",
    0x65735543: "fusectl",
    0x6E736673: "nsfs",
    0x50495045: "pipefs",
    0x534F434B: "sockfs",
    0x09041934: "anon_inodefs",
    0x7655821: "resctrl",
    0x62646576: "bdev",
    0x6C6F6F70: "binder",
}
# The same kernel interfaces by the names mountinfo gives them, and devtmpfs, which statfs
# cannot tell from tmpfs: both report TMPFS_MAGIC.
_PSEUDO_MOUNT_TYPES = frozenset({*PSEUDO_FILESYSTEMS.values(), "devtmpfs"})


class _StatFs(ctypes.Structure):
    # Only f_type is read; the rest of struct statfs (120 bytes on 64-bit Linux) is room.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


def filesystem_magic(path: str | os.PathLike[str]) -> int:
    """The f_type of the filesystem serving ``path`` (links followed). Raises OSError."""
    buf = _StatFs()
    if libc().statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        raise_errno(f"statfs {os.fspath(path)}")
    return int(buf.f_type) & 0xFFFFFFFF  # a 32-bit magic number in a signed long


def pseudo_filesystem(path: str | os.PathLike[str], device: int) -> str | None:
    """The name of the pseudo-filesystem that holds ``path`` (whose st_dev is ``device``),
    or None for storage. Where statfs fails (a seccomp profile, a path gone meanwhile),
    the device's mount decides; where neither can say, it is taken for storage."""
    try:
        magic: int | None = filesystem_magic(path)
    except OSError:
        magic = None
    if magic is not None and magic in PSEUDO_FILESYSTEMS:
        return PSEUDO_FILESYSTEMS[magic]
    if magic is None or magic == TMPFS_MAGIC:
        mount_type = _mount_type(device)
        if mount_type in _PSEUDO_MOUNT_TYPES:
            return mount_type
    return None


def _mount_type(device: int) -> str | None:
    try:
        mounts = read_mounts()
    except OSError:
        return None
    wanted = (os.major(device), os.minor(device))
    return next((m.fstype for m in mounts if (m.major, m.minor) == wanted), None)

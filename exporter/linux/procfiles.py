"""The files a process uses, from /proc: what it maps (``/proc/<pid>/maps``: shared objects,
mmapped weights, with the mapped offsets), what it holds open (``/proc/<pid>/fd``), its
executable and environment.

Reading another process's maps, fds, exe, environ or root needs ptrace read access to it
(``PTRACE_MODE_READ_FSCREDS``): the same user, with no capability the reader lacks, and a
dumpable process; or CAP_SYS_PTRACE. In a pod the process must also be visible
(``shareProcessNamespace: true``). Paths are as the process sees them (its mount
namespace); open them through ``/proc/<pid>/root`` (``exporter.linux.files.FileRoot``).

The /proc root is a parameter: tests point it at a tree they control.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from exporter.linux.files import FileRoot
from exporter.linux.proc import PROC

# Pseudo files a process maps or holds that are no file on a disk.
_PSEUDO_PREFIXES = ("/proc/", "/sys/", "/dev/", "/memfd:", "/SYSV")
_DELETED = " (deleted)"


class ProcessAccessError(OSError):
    """The process's files cannot be read: gone, or no ptrace read access to it."""


@dataclass(frozen=True, slots=True)
class Mapping:
    """One file-backed mapping: bytes [offset, offset + length) of ``path``."""

    path: str
    offset: int
    length: int
    device: tuple[int, int]  # (major, minor) as the kernel prints it
    inode: int


def is_disk_path(path: str) -> bool:
    """An absolute path that can name a regular file (not a socket, pipe, memfd, /proc)."""
    return path.startswith("/") and not path.startswith(_PSEUDO_PREFIXES)


def _denied(pid: int, what: str, exc: OSError) -> ProcessAccessError:
    reason = (
        "the process is gone"
        if isinstance(exc, FileNotFoundError | ProcessLookupError)
        else "no ptrace read access: run as the process's user (with no capability it "
        "lacks) or with CAP_SYS_PTRACE; in a pod, with shareProcessNamespace: true"
    )
    return ProcessAccessError(exc.errno, f"cannot read /proc/{pid}/{what}: {reason}")


def read_maps(pid: int, proc: Path = PROC) -> list[Mapping]:
    """The file-backed mappings of ``pid``, in address order (deleted files left out)."""
    try:
        text = (proc / str(pid) / "maps").read_text(errors="surrogateescape")
    except OSError as exc:
        raise _denied(pid, "maps", exc) from None
    mappings = []
    for line in text.splitlines():
        # address perms offset dev inode path (the path may hold spaces: the rest)
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[4] == "0":
            continue
        path = fields[5]
        if path.endswith(_DELETED) or not is_disk_path(path):
            continue
        start, _, end = fields[0].partition("-")
        major, _, minor = fields[3].partition(":")
        mappings.append(
            Mapping(
                path=path,
                offset=int(fields[2], 16),
                length=int(end, 16) - int(start, 16),
                device=(int(major, 16), int(minor, 16)),
                inode=int(fields[4]),
            )
        )
    return mappings


def open_paths(pid: int, proc: Path = PROC) -> list[str]:
    """Paths of the files ``pid`` holds open, by descriptor number (pseudo files left out)."""
    fd_dir = proc / str(pid) / "fd"
    try:
        entries = sorted(fd_dir.iterdir(), key=lambda e: int(e.name) if e.name.isdigit() else -1)
    except OSError as exc:
        raise _denied(pid, "fd", exc) from None
    paths = []
    for entry in entries:
        try:
            target = str(entry.readlink())
        except OSError:  # closed meanwhile
            continue
        if is_disk_path(target) and not target.endswith(_DELETED):
            paths.append(target)
    return paths


def read_exe(pid: int, proc: Path = PROC) -> str | None:
    """The executable's path, as the process sees it (None when it cannot be read)."""
    try:
        target = str((proc / str(pid) / "exe").readlink())
    except OSError:
        return None
    return None if target.endswith(_DELETED) else target


def read_environ(pid: int, proc: Path = PROC) -> dict[str, str]:
    """The environment the process started with (empty when it cannot be read)."""
    try:
        raw = (proc / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if b"=" in item)
    return {
        k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape") for k, _, v in pairs
    }


def mount_namespace(pid: int | str, proc: Path = PROC) -> str | None:
    """The mount namespace of ``pid`` ("self" for this process), e.g. 'mnt:[4026531841]'."""
    try:
        return str((proc / str(pid) / "ns" / "mnt").readlink())
    except OSError:
        return None


def process_root(pid: int, proc: Path = PROC) -> FileRoot:
    """The root directory of ``pid`` (its container's filesystem, its own mounts), held."""
    namespace = mount_namespace(pid, proc)
    shared = namespace is not None and namespace == mount_namespace("self", proc)
    try:
        return FileRoot(proc / str(pid) / "root", same_namespace=shared)
    except OSError as exc:
        raise _denied(pid, "root", exc) from None


def uses_any(pid: int, files: frozenset[tuple[int, int]], proc: Path = PROC) -> bool:
    """Whether ``pid`` maps or holds open any of ``files`` (device, inode)."""
    for mapping in read_maps(pid, proc):
        if (os.makedev(*mapping.device), mapping.inode) in files:
            return True
    try:
        entries = list((proc / str(pid) / "fd").iterdir())
    except OSError as exc:
        raise _denied(pid, "fd", exc) from None
    for entry in entries:
        try:
            st = entry.stat()  # the open file itself (the link is followed)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in files:
            return True
    return False

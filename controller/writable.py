"""Can a file (or files in a directory) be written here? Asked before hours of work whose
result goes there, so that a mistake costs one line, not the work.

The answer is a real attempt: a probe file is created (with the directories it needs) and
removed again; an existing file is opened for appending, never changed. Pseudo-filesystems
(procfs, sysfs) are refused by name: they are kernel state, not storage.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from pathlib import Path

from exporter.errors import UserError
from exporter.linux.statfs import pseudo_filesystem


class NotWritableError(UserError):
    """A file or directory that a command would write cannot be written."""


def check_file(path: Path, what: str, error: type[UserError] = NotWritableError) -> None:
    """``error`` unless ``path`` can be created or appended to; nothing is left behind."""
    try:
        st = path.stat()
    except FileNotFoundError:
        _probe(path, what, error)
        return
    except OSError as exc:
        raise error(f"{what} {path}: cannot be written: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        empty = (
            " (an empty setting or flag names the current directory)" if str(path) == "." else ""
        )
        raise error(f"{what} {path}: is a directory{empty}; a file is needed")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path}: not a regular file")
    _refuse_pseudo(path, path, what, error)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC))
    except OSError as exc:
        raise error(f"{what} {path}: cannot be written: {exc.strerror or exc}") from None


def check_directory(path: Path, what: str, error: type[UserError] = NotWritableError) -> None:
    """``error`` unless files can be created in ``path`` (made if missing, then removed)."""
    if path.exists() and not path.is_dir():
        raise error(f"{what} {path}: exists and is not a directory")
    _probe(path / f".pagewarm-probe-{uuid.uuid4().hex[:8]}", what, error, shown=path)


def _probe(path: Path, what: str, error: type[UserError], shown: Path | None = None) -> None:
    shown = shown or path
    made: list[Path] = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        made.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise error(f"{what} {shown}: cannot be written: {parent} is not a directory")
    _refuse_pseudo(parent, shown, what, error)
    try:
        for directory in reversed(made):
            directory.mkdir()
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        path.unlink()
    except OSError as exc:
        raise error(f"{what} {shown}: cannot be written: {exc.strerror or exc}") from None
    finally:
        for directory in made:
            with contextlib.suppress(OSError):
                directory.rmdir()


def _refuse_pseudo(existing: Path, shown: Path, what: str, error: type[UserError]) -> None:
    kind = pseudo_filesystem(existing, existing.stat().st_dev)
    if kind is not None:
        raise error(f"{what} {shown}: {existing} is {kind}, not storage")

"""Where an engine's start-up reads from: the directory trees whose files the recorder
watches, found from what the engine shows in /proc.

Python imports open, read and close hundreds of small files within milliseconds: polling
the engine's open descriptors misses them. Instead the recorder watches every file under
the trees an engine imports from, and sees a read as pages that turned resident. Those
trees are the library roots:

- a ``site-packages`` or ``dist-packages`` directory that a mapped or open file lies in
  (a shared object of a package, a weight file loaded by a library);
- the interpreter's: ``<prefix>/lib/pythonX.Y`` (the standard library) for the
  executable ``<prefix>/bin/python...``, with its ``site-packages``, or a virtual
  environment's (``pyvenv.cfg`` beside its ``bin/``) instead of the base's;
- a mapped module of the standard library (``lib-dynload``);
- the entries of ``PYTHONPATH`` in the engine's environment.

A standard library root leaves out the package directories beneath it (they are roots of
their own, when the interpreter uses them) and its own test suite. Files that never
matter at start-up are left out by name (headers, static libraries, type stubs): torch
alone ships some ten thousand headers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from exporter.linux.files import FileRoot

PACKAGE_DIRS = frozenset({"site-packages", "dist-packages"})
# Left out of a standard library root: package directories (roots of their own when
# used) and CPython's own test suite (a quarter of the standard library's files).
STDLIB_SKIPPED = PACKAGE_DIRS | {"test", "idlelib", "turtledemo"}
_STDLIB = re.compile(r"^python\d+(\.\d+)?t?$")
IGNORED_SUFFIXES = (".h", ".hpp", ".hxx", ".cuh", ".inl", ".a", ".pyi", ".cmake", ".lib")


def within(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or lies under it."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def library_root(path: str) -> str | None:
    """The library root ``path`` lies under, or None (the deepest package directory, else
    a ``lib/pythonX.Y`` standard library)."""
    parts = PurePosixPath(path).parts
    for index in range(len(parts) - 1, 0, -1):
        if parts[index] in PACKAGE_DIRS:
            return str(PurePosixPath(*parts[: index + 1]))
    for index in range(len(parts) - 1, 1, -1):
        if _STDLIB.match(parts[index]) and parts[index - 1] in ("lib", "lib64"):
            return str(PurePosixPath(*parts[: index + 1]))
    return None


def _is_stdlib(directory: str) -> bool:
    path = PurePosixPath(directory)
    return bool(_STDLIB.match(path.name)) and path.parent.name in ("lib", "lib64")


def _stdlib_dirs(root: FileRoot, program: str) -> list[str]:
    """``<prefix>/lib/pythonX.Y`` for a ``<prefix>/bin/python...`` that exists in the root."""
    exe = PurePosixPath(program)
    if exe.parent.name != "bin" or not exe.name.startswith("python"):
        return []
    lib = exe.parent.parent / "lib"
    version = exe.name.removeprefix("python")
    if re.fullmatch(r"\d+\.\d+t?", version):
        names = [f"python{version}"]
    else:  # `python` or `python3`: whichever pythonX.Y the prefix has
        try:
            names = sorted(p.name for p in Path(root.host_path(str(lib))).iterdir())
        except OSError:
            names = []
    return [str(lib / n) for n in names if _STDLIB.match(n) and _exists(root, str(lib / n))]


def _exists(root: FileRoot, path: str) -> bool:
    return Path(root.host_path(path)).exists()


def python_roots(
    root: FileRoot, executable: str | None, argv0: str | None, environ: Mapping[str, str]
) -> list[str]:
    """The roots an engine reveals before it has mapped anything: its interpreter's
    standard library and site-packages, and PYTHONPATH (existing directories only)."""
    roots: list[str] = []
    venv = None
    if argv0 and "/" not in argv0:  # found on the engine's PATH, as its shell found it
        argv0 = next(
            (
                f"{d}/{argv0}"
                for d in environ.get("PATH", "").split(":")
                if d.startswith("/") and _exists(root, f"{d}/{argv0}")
            ),
            None,
        )
    if argv0 and argv0.startswith("/"):
        prefix = PurePosixPath(argv0).parent.parent
        if _exists(root, str(prefix / "pyvenv.cfg")):
            venv = prefix
            roots += [f"{d}/site-packages" for d in _stdlib_dirs(root, argv0)]
    for program in dict.fromkeys(p for p in (executable, argv0) if p and p.startswith("/")):
        for stdlib in _stdlib_dirs(root, program):
            roots.append(stdlib)
            if venv is None:
                roots += [f"{stdlib}/{name}" for name in sorted(PACKAGE_DIRS)]
    roots += [e for e in environ.get("PYTHONPATH", "").split(":") if e.startswith("/")]
    return [r for r in dict.fromkeys(roots) if Path(root.host_path(r)).is_dir()]


def walk(root: FileRoot, directory: str) -> Iterator[str]:
    """Regular files under ``directory`` (paths in the root), links not followed, files
    that never matter at start-up left out; sorted per directory, so that a package's
    modules stay together."""
    skipped = STDLIB_SKIPPED if _is_stdlib(directory) else frozenset()
    top = directory.rstrip("/")
    pending = [top]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(root.host_path(current)) as found:
                listed = sorted(found, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in listed:  # d_type: no stat per entry; links are neither dir nor file
            if entry.is_dir(follow_symlinks=False):
                if not (current == top and entry.name in skipped):
                    subdirs.append(f"{current}/{entry.name}")
            elif entry.is_file(follow_symlinks=False) and not entry.name.endswith(IGNORED_SUFFIXES):
                yield f"{current}/{entry.name}"
        pending.extend(reversed(subdirs))

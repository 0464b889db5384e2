"""Recording what an engine reads while it starts, without root and without touching it.

Round after round (every ``interval``), the recorder reads the engine's mappings and open
files from /proc (``exporter.linux.procfiles``), adds the library roots they reveal
(``controller.profile.roots``), and looks at the page-cache residency of every watched
file: a page that turned resident since the last round was read by the start-up, in
that round (readahead included: the replay brings in the same). Residency persists after
a file is closed, so a module opened, read and closed within a millisecond is still seen.
cachestat(2) (one syscall a file) says whether a file changed at all; only then does
mincore(2) say which pages.

What it needs: ptrace read access to the engine (same user and no capability it lacks,
or CAP_SYS_PTRACE; in a pod, shareProcessNamespace: true) for its maps, fds and root; and
truthful residency of the watched files (their owner, write access or CAP_FOWNER: see
``exporter.linux.permissions``). Without the latter the recording falls back to what
/proc shows: mapped extents and open files (``method: mappings``).

What it cannot see: whether a page resident at a file's first look was read by this
start-up. A launched command's interpreter roots are looked at before it starts
(``prepare``): their resident pages are the baseline, left out and counted
(``unattributed_resident_bytes``), and everything the command reads there is seen. An
engine that is already running when the recorder attaches (the sidecar sees vLLM a few
hundred milliseconds after its start, and walking its roots takes as long again) has read
much by the first look: there, pages resident at a file's first look count as read in
that round. In a pod the engine's container files are read by no one else, so on a cold
node that is exact; on a warm node (a restart) the profile holds what earlier starts left
resident. Nothing in the recorder reads a watched file's contents: mmap + mincore fault
nothing in.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.profile import roots as library
from controller.profile.schema import (
    RECORDER_REVISION,
    FileIdentity,
    ProfileEntry,
    ProfileKey,
    Range,
    Recording,
    SeenAs,
    StartupProfile,
    Totals,
    now,
)
from exporter.linux import mincore, permissions
from exporter.linux.files import FileRoot
from exporter.linux.libc import page_size
from exporter.linux.proc import PROC, read_cmdline
from exporter.linux.procfiles import (
    ProcessAccessError,
    mount_namespace,
    open_paths,
    process_root,
    read_environ,
    read_exe,
    read_maps,
)
from exporter.residency import ResidencyProbe

DEFAULT_INTERVAL_SECONDS = 0.1
DEFAULT_MAX_FILES = 200_000
# Descriptors kept open across rounds (a reopen per round costs more than the look itself);
# files past the budget are reopened each round.
_FD_RESERVE = 256
_RUNS = re.compile(rb"\x01+")
_SPECIFICITY: dict[SeenAs, int] = {"read": 0, "open": 1, "mapped": 2}


@dataclass(slots=True)
class _Watched:
    path: str
    seen_as: SeenAs
    # Resident pages at first sight count as the engine's (mapped within these extents,
    # in pages; open: the whole file). Files watched as library-root candidates: False.
    attribute_first_look: bool
    extents: list[tuple[int, int]] = field(default_factory=list)
    fd: int | None = None
    identity: FileIdentity | None = None
    cached_pages: int = -1
    seen: bytes | None = None  # pages seen resident so far (one byte a page, 0/1)
    ranges: list[Range] = field(default_factory=list)
    first_touch: tuple[int, int] | None = None  # (round, position in the round)
    seen_round: int = 0  # the round /proc first showed it (mapped, open)
    untrusted: bool = False  # the kernel would not report its residency truthfully
    complete: bool = False  # every page seen resident: no need to look again
    unattributed_pages: int = 0  # resident at first sight, not counted as read
    gone: bool = False


def _fd_budget() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return max(0, soft - _FD_RESERVE)


def _runs(pages: bytes, round_: int) -> list[Range]:
    return [(m.start(), m.end() - m.start(), round_) for m in _RUNS.finditer(pages)]


def _within(vector: bytes, extents: Sequence[tuple[int, int]]) -> bytes:
    """``vector`` with only the pages inside ``extents`` (first page, pages) kept."""
    mask = bytearray(len(vector))
    for first, pages in extents:
        end = min(len(vector), first + pages)
        if first < end:
            mask[first:end] = b"\x01" * (end - first)
    return _and_not(vector, b"", bytes(mask))


def _and_not(a: bytes, b: bytes, mask: bytes | None = None) -> bytes:
    """Byte-wise ``a & ~b`` (& mask) of 0/1 vectors, at C speed through big integers."""
    value = int.from_bytes(a, "little") & ~int.from_bytes(b.ljust(len(a), b"\0"), "little")
    if mask is not None:
        value &= int.from_bytes(mask, "little")
    return value.to_bytes(len(a), "little")


def _or(a: bytes, b: bytes) -> bytes:
    size = max(len(a), len(b))
    return (int.from_bytes(a, "little") | int.from_bytes(b, "little")).to_bytes(size, "little")


class Recorder:
    """Watches one engine's start-up; ``look()`` is one round (blocking: run it in a
    thread), ``profile()`` the result. ``prepare()`` before the engine starts gives a
    baseline of the roots known in advance (a launched command's interpreter)."""

    def __init__(
        self,
        *,
        probe: ResidencyProbe | None = None,
        exclude: Iterable[tuple[int, int]] = (),
        proc: Path = PROC,
        max_files: int = DEFAULT_MAX_FILES,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        self.root = FileRoot("/")  # until attach(): then the engine's (see _follow_root)
        self._namespace = mount_namespace("self", proc)
        self.probe = probe or ResidencyProbe()
        self.exclude = frozenset(exclude)  # (device, inode): the model's weights
        self.proc = proc
        self.max_files = max_files
        self.interval = interval_seconds
        self.page = page_size()
        self.pid: int | None = None
        self.rounds = 0
        self.started = time.monotonic()
        self.candidate_overflow = 0
        self._watched: dict[str, _Watched] = {}
        self._roots: list[str] = []
        self._fd_budget = _fd_budget()
        self._held = 0
        self._position = 0

    # What to watch ------------------------------------------------------------------------

    def prepare(self, roots: Iterable[str]) -> None:
        """Watch these roots now (before the engine starts): their residency is the
        baseline, so everything the engine reads in them later is seen."""
        self._add_roots(roots, attribute=False)
        self._look_at_all()

    def attach(self, pid: int) -> None:
        """Follow process ``pid``; its interpreter's roots are watched from now on."""
        self.pid = pid
        self.started = time.monotonic()
        self._follow_root()
        argv = read_cmdline(pid, self.proc).split()
        exe = read_exe(pid, self.proc)
        environ = read_environ(pid, self.proc)
        roots = library.python_roots(self.root, exe, argv[0] if argv else None, environ)
        self._add_roots(roots, attribute=True)

    def _add_roots(self, candidates: Iterable[str], *, attribute: bool) -> None:
        for directory in dict.fromkeys(candidates):
            if directory in self._roots or not Path(self.root.host_path(directory)).is_dir():
                continue
            self._roots.append(directory)
            for path in library.walk(self.root, directory):
                self._watch(path, "read", attribute=attribute)

    def _watch(self, path: str, seen_as: SeenAs, *, attribute: bool) -> _Watched | None:
        watched = self._watched.get(path)
        if watched is not None:
            # The most specific sighting wins: a library is open for a moment before the
            # loader maps it, and a round may fall in between.
            if _SPECIFICITY[seen_as] > _SPECIFICITY[watched.seen_as]:
                watched.seen_as = seen_as
            return watched
        if len(self._watched) >= self.max_files:
            self.candidate_overflow += 1
            return None
        watched = _Watched(path, seen_as, attribute_first_look=attribute, seen_round=self.rounds)
        self._watched[path] = watched
        return watched

    def _follow_root(self) -> None:
        """Open files through the engine's root, anew when it entered another mount
        namespace (a launched command that runs ``unshare -m`` first): the same paths may
        then name other files, which ``_open`` notices."""
        assert self.pid is not None
        namespace = mount_namespace(self.pid, self.proc)
        if namespace is None or namespace == self._namespace:
            return
        root = process_root(self.pid, self.proc)
        self.root.close()
        self.root, self._namespace = root, namespace
        for watched in self._watched.values():
            self._release(watched)
            watched.gone = watched.complete = False

    def _release(self, watched: _Watched) -> None:
        if watched.fd is not None:
            os.close(watched.fd)
            watched.fd = None
            self._held -= 1

    def _from_proc(self) -> None:
        """New mappings and open files of the engine, and the roots they reveal."""
        if self.pid is None:
            return
        try:
            self._follow_root()
            mappings = read_maps(self.pid, self.proc)
            opened = open_paths(self.pid, self.proc)
        except ProcessAccessError:
            if self.rounds <= 1:
                raise
            self.pid = None  # the engine exited: what was seen stays
            return
        revealed = []
        for mapping in mappings:
            watched = self._watch(mapping.path, "mapped", attribute=True)
            if watched is not None:
                extent = (mapping.offset // self.page, -(-mapping.length // self.page))
                if extent not in watched.extents:
                    watched.extents.append(extent)
            revealed.append(mapping.path)
        for path in opened:
            self._watch(path, "open", attribute=True)
            revealed.append(path)
        self._add_roots(
            (r for p in revealed if (r := library.library_root(p)) is not None), attribute=True
        )

    # One round ----------------------------------------------------------------------------

    def look(self) -> None:
        """One round: read /proc, then the residency of every watched file."""
        self.rounds += 1
        self._from_proc()
        self._look_at_all()

    def _look_at_all(self) -> None:
        self._position = 0
        for watched in list(self._watched.values()):
            if not (watched.gone or watched.complete):
                self._look(watched)

    def _open(self, watched: _Watched) -> int | None:
        if watched.fd is not None:
            return watched.fd
        try:
            fd = self.root.open(watched.path)
        except OSError:
            watched.gone = True
            return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in self.exclude:
            os.close(fd)
            watched.gone = True
            return None
        known = watched.identity
        if known is None or (st.st_dev, st.st_ino) != (known.device, known.inode):
            if known is not None:  # another file at this path now: start over with it
                watched.seen, watched.cached_pages = None, -1
            watched.identity = FileIdentity.of(st)
        if self._held < self._fd_budget:
            watched.fd = fd
            self._held += 1
        return fd

    def _look(self, watched: _Watched) -> None:
        fd = self._open(watched)
        if fd is None or watched.identity is None:
            return
        held = watched.fd is not None  # else opened for this look only
        try:
            self._look_open(watched, fd, watched.identity.size)
        finally:
            if not held:
                os.close(fd)

    def _look_open(self, watched: _Watched, fd: int, size: int) -> None:
        if size == 0 or watched.untrusted:
            return
        cached = self.probe.cached_bytes(fd, 0, size)
        if cached is None:
            watched.untrusted = True  # only what /proc shows counts (see profile())
            return
        # Rounded up: the probe clamps at the end of the file, so a file smaller than a
        # page (an __init__.py, a RECORD) reads as fewer bytes than its one page.
        pages = -(-cached // self.page)
        if pages == watched.cached_pages:
            return  # no page came or went (cachestat: one syscall): nothing new
        vector = b"" if pages == 0 else self._vector(fd, size)  # none resident: no mincore
        if vector is None:
            watched.untrusted = True
            return
        # What mincore saw, not cachestat: cachestat also counts pages still being read
        # in, which mincore does not report yet. Kept from cachestat, a look in the middle
        # of a read would leave those pages unseen for good (no change next round).
        watched.cached_pages = vector.count(1)
        if watched.seen is None:
            if not watched.attribute_first_look:
                new = b""
                watched.unattributed_pages = vector.count(1)
            elif watched.seen_as == "mapped":
                new = _within(vector, watched.extents)
            else:
                new = vector
            watched.seen = vector
        else:
            new = _and_not(vector, watched.seen)
            watched.seen = _or(watched.seen, vector)
        self._touched(watched, _runs(new, self.rounds))
        if watched.cached_pages >= -(-size // self.page):  # nothing more can turn resident
            watched.complete = True
            self._release(watched)

    def _vector(self, fd: int, size: int) -> bytes | None:
        if not permissions.page_cache_query_trusted(fd):
            return None
        try:
            return b"".join(mincore.resident_vectors(fd, 0, size))
        except OSError:  # truncated meanwhile
            return None

    def _extent_runs(self, watched: _Watched) -> list[Range]:
        """What /proc showed of an untrusted file: its mapped extents, or all of it."""
        if watched.identity is None or watched.seen_as == "read":
            return []
        if watched.seen_as == "mapped":
            return [(first, pages, watched.seen_round) for first, pages in watched.extents]
        return [(0, -(-watched.identity.size // self.page), watched.seen_round)]

    def _touched(self, watched: _Watched, ranges: list[Range]) -> None:
        if not ranges:
            return
        if watched.first_touch is None:
            watched.first_touch = (self.rounds, self._position)
            self._position += 1
        watched.ranges.extend(ranges)

    # The result ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Rounds every ``interval`` until ``stop`` is set, then one last round."""
        while not stop.is_set():
            began = time.monotonic()
            self.look()
            stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        self.look()

    def profile(
        self, key: ProfileKey, *, ended_by: str, command: Sequence[str] = ()
    ) -> StartupProfile:
        for watched in self._live():
            if watched.untrusted and not watched.ranges:
                watched.ranges = self._extent_runs(watched)
                watched.first_touch = (watched.seen_round, 0) if watched.ranges else None
        touched = sorted(
            (w for w in self._live() if w.ranges), key=lambda w: w.first_touch or (0, 0)
        )
        entries = tuple(
            ProfileEntry(
                path=w.path,
                identity=w.identity,
                seen_as=w.seen_as,
                ranges=tuple(_clip(w.ranges, w.identity.size, self.page)),
            )
            for w in touched
            if w.identity is not None
        )
        live = self._live()
        untrusted = sum(1 for w in live if w.untrusted)
        return StartupProfile(
            key=key,
            recording=Recording(
                recorder=RECORDER_REVISION,
                recorded_at=now(),
                host=socket.gethostname(),
                kernel=platform.release(),
                page_size=self.page,
                method="mappings" if live and untrusted == len(live) else "residency",
                interval_seconds=self.interval,
                rounds=self.rounds,
                seconds=round(time.monotonic() - self.started, 3),
                command=tuple(command),
                ended_by=ended_by,
            ),
            totals=Totals(
                entries=len(entries),
                bytes=sum(e.pages for e in entries) * self.page,
                mapped_entries=sum(1 for e in entries if e.seen_as == "mapped"),
                open_entries=sum(1 for e in entries if e.seen_as == "open"),
                read_entries=sum(1 for e in entries if e.seen_as == "read"),
                candidate_files=len(live),
                untrusted_files=untrusted,
                unattributed_resident_bytes=sum(w.unattributed_pages for w in live) * self.page,
            ),
            entries=entries,
        )

    def _live(self) -> list[_Watched]:
        return [w for w in self._watched.values() if w.identity is not None and not w.gone]

    def close(self) -> None:
        for watched in self._watched.values():
            self._release(watched)
        self.root.close()


def _clip(ranges: list[Range], size: int, page: int) -> list[Range]:
    """Ranges within the file's last page (a mapping may extend past the end)."""
    last = -(-size // page)
    out = []
    for first, pages, round_ in ranges:
        end = min(first + pages, last)
        if end > first:
            out.append((first, end - first, round_))
    return out

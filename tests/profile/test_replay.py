"""Replaying a profile over real files: recorded order, the I/O depth, what is missing only;
stale and missing entries skipped and counted; the file format and its size budget."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from controller.linux.pagecache import drop
from controller.profile.replay import replay
from controller.profile.schema import (
    RECORDER_REVISION,
    FileIdentity,
    ProfileEntry,
    ProfileError,
    ProfileKey,
    Recording,
    StartupProfile,
    Totals,
    decode,
    encode,
    load,
    now,
    outdated_reason,
    save,
)
from exporter.linux.files import FileRoot
from exporter.linux.libc import page_size
from exporter.residency import ResidencyProbe

PAGE = page_size()
MiB = 1 << 20


def _files(directory: Path, count: int, size: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = directory / f"lib{index:03d}.so"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    os.sync()
    for path in paths:
        _evict(path)
    return paths


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        drop(fd)
    finally:
        os.close(fd)


def _resident(path: Path, offset: int = 0, length: int = 0) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        length = length or os.fstat(fd).st_size - offset
        return (ResidencyProbe().cached_bytes(fd, offset, length) or 0) / length
    finally:
        os.close(fd)


def profile_of(entries: list[tuple[Path, list[tuple[int, int, int]]]]) -> StartupProfile:
    made = tuple(
        ProfileEntry(
            path=str(path),
            identity=FileIdentity.of(path.stat()),
            seen_as="read",
            ranges=tuple(ranges),
        )
        for path, ranges in entries
    )
    pages = sum(e.pages for e in made)
    return StartupProfile(
        key=ProfileKey(engine="e", model="m"),
        recording=Recording(
            recorded_at=now(),
            host="h",
            kernel="k",
            page_size=PAGE,
            method="residency",
            interval_seconds=0.1,
            rounds=3,
            seconds=1.0,
            ended_by="ready",
        ),
        totals=Totals(
            entries=len(made),
            bytes=pages * PAGE,
            mapped_entries=0,
            open_entries=0,
            read_entries=len(made),
            candidate_files=len(made),
            untrusted_files=0,
            unattributed_resident_bytes=0,
        ),
        entries=made,
    )


class LoggingRoot(FileRoot):
    """The real root, noting which file each thread opens, in order."""

    def __init__(self) -> None:
        super().__init__("/")
        self.opened: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def open(self, path: str) -> int:
        with self.lock:
            self.opened.append((path, threading.current_thread().name))
        return super().open(path)


def test_replay_warms_exactly_the_ranges_in_first_touch_order(shared_tmp: Path) -> None:
    a, b, c = _files(shared_tmp, 3, 4 * MiB)
    pages = MiB // PAGE
    # c first (round 1), then a (round 2), then b's second MiB (round 3), then a's last.
    profile = profile_of(
        [
            (c, [(0, pages, 1)]),
            (a, [(0, pages, 2), (3 * pages, pages, 4)]),
            (b, [(pages, pages, 3)]),
        ]
    )
    root = LoggingRoot()
    with root:
        result = replay(profile, root, io_depth=1)
    assert [Path(p).name for p, _ in root.opened] == ["lib002.so", "lib000.so", "lib001.so"]
    assert result.replayed_entries == 3
    assert (result.stale_entries, result.missing_entries, result.failed_entries) == (0, 0, 0)
    assert result.read_bytes >= 0.95 * 4 * MiB
    assert _resident(c, 0, MiB) >= 0.95
    assert _resident(a, 0, MiB) >= 0.95 and _resident(a, 3 * MiB, MiB) >= 0.95
    assert _resident(b, MiB, MiB) >= 0.95
    # Readahead off: what was not recorded stays out.
    assert _resident(a, MiB, 2 * MiB) <= 0.05
    assert _resident(b, 2 * MiB, 2 * MiB) <= 0.05

    # Again, all resident: nothing read.
    again = replay(profile, FileRoot("/"))
    assert again.read_bytes == 0
    assert again.resident_bytes >= 0.95 * 4 * MiB


def test_the_io_depth_is_the_number_of_readers(shared_tmp: Path) -> None:
    paths = _files(shared_tmp, 12, 2 * MiB)
    profile = profile_of([(p, [(0, 2 * MiB // PAGE, i)]) for i, p in enumerate(paths)])
    for depth in (1, 2, 4):
        for path in paths:
            _evict(path)
        with LoggingRoot() as root:
            result = replay(profile, root, io_depth=depth)
        readers = {thread for _, thread in root.opened}
        assert 1 <= len(readers) <= depth
        assert result.io_depth == depth
        assert result.replayed_entries == 12
    assert len(readers) >= 2  # depth 4 over 12 files: more than one reader took part


def test_stale_and_missing_entries_are_skipped_and_counted(shared_tmp: Path) -> None:
    kept, touched, replaced, removed, grown = _files(shared_tmp, 5, MiB)
    pages = MiB // PAGE
    profile = profile_of([(p, [(0, pages, 1)]) for p in (kept, touched, replaced, removed, grown)])
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    replacement = shared_tmp / "new.so"
    replacement.write_bytes(os.urandom(MiB))
    os.utime(replacement, ns=(replaced.stat().st_atime_ns, replaced.stat().st_mtime_ns))
    replacement.replace(replaced)  # same size and mtime, another inode on the same device
    removed.unlink()
    with grown.open("ab") as handle:
        handle.write(b"x")
    for path in (kept, touched, replaced, grown):
        _evict(path)

    result = replay(profile, FileRoot("/"))

    assert result.replayed_entries == 1
    assert result.stale_entries == 3
    assert result.missing_entries == 1
    assert result.failed_entries == 0
    assert result.partial_reason is None
    assert _resident(kept) >= 0.95
    for stale in (touched, replaced, grown):
        assert _resident(stale) <= 0.05  # not read
    reasons = " ".join(result.problems)
    assert "modified since the recording" in reasons
    assert "replaced by another file" in reasons
    assert "size changed" in reasons


def test_the_paths_a_distributions_record_lists_are_looked_up_inside_the_root(
    shared_tmp: Path,
) -> None:
    """packages_distributions() checks that every file a RECORD lists exists: the replay
    looks them up too (their inodes), within the engine's root, never outside it."""
    root = shared_tmp / "root"
    site = root / "site"
    headers = site / "torchlike" / "include"
    headers.mkdir(parents=True)
    for index in range(30):  # never read by the engine: headers
        (headers / f"h{index}.h").write_text("#pragma once\n")
    (site / "torchlike" / "__init__.py").write_text("")
    (shared_tmp / "outside").write_text("not the engine's\n")  # reached by ../ from the root
    dist_info = site / "torchlike-1.0.dist-info"
    dist_info.mkdir()
    listed = [f"torchlike/include/h{i}.h,sha256=x,13" for i in range(30)]
    listed += [
        "torchlike/__init__.py,,",
        '"torchlike/gone,with a comma.py",,',  # listed, since removed: not found
        "../../outside,,",  # ".." stops at the root: no /outside there (one beside it)
        "torchlike-1.0.dist-info/RECORD,,",
    ]
    record = dist_info / "RECORD"
    record.write_text("\n".join(listed) + "\n")
    profile = profile_of([(record, [(0, 1, 1)])])
    inside = "/site/torchlike-1.0.dist-info/RECORD"
    profile = profile.model_copy(
        update={"entries": (profile.entries[0].model_copy(update={"path": inside}),)}
    )

    with FileRoot(root) as engine_root:
        assert not engine_root.own
        result = replay(profile, engine_root)

    assert result.replayed_entries == 1
    assert result.looked_up_paths == 30 + 1 + 1  # the headers, __init__.py, the RECORD
    assert result.to_dict()["looked_up_paths"] == 32


def test_a_profile_from_an_older_recorder_says_to_record_it_again(shared_tmp: Path) -> None:
    """Files without the recorder's revision come from revision 1, which missed files."""
    (path,) = _files(shared_tmp, 1, PAGE)
    document = json.loads(encode(profile_of([(path, [(0, 1, 1)])]), compress=False))
    del document["recording"]["recorder"]
    old = decode(json.dumps(document).encode())
    assert old.recording.recorder == 1
    assert "recorded by an older pagewarm" in (outdated_reason(old) or "")
    current = old.model_copy(
        update={"recording": old.recording.model_copy(update={"recorder": RECORDER_REVISION})}
    )
    assert outdated_reason(current) is None


def test_a_profile_round_trips_and_fits_its_size_budget(shared_tmp: Path) -> None:
    paths = _files(shared_tmp, 40, 64 * PAGE)
    # Every other page: 32 ranges a file, merged when the budget is tight.
    profile = profile_of([(p, [(2 * k, 1, k) for k in range(32)]) for p in paths])
    plain = encode(profile, compress=False)
    assert decode(plain) == profile
    packed = encode(profile, compress=True)
    assert packed[:2] == b"\x1f\x8b" and decode(packed) == profile

    budget = len(plain) // 3
    fitted = decode(encode(profile, compress=False, max_bytes=budget))
    assert len(encode(fitted, compress=False)) <= budget
    assert fitted.totals.merged_gap_bytes > 0
    assert fitted.totals.bytes == sum(e.pages for e in fitted.entries) * PAGE
    # Merged ranges keep the earliest round and cover what was recorded.
    first = fitted.entries[0]
    assert first.ranges[0][2] == 0
    assert sum(pages for _, pages, _ in first.ranges) >= 32

    tiny = decode(encode(profile, compress=False, max_bytes=4096))
    assert tiny.totals.dropped_entries > 0
    assert tiny.entries == profile.entries[: len(tiny.entries)] or tiny.entries[0].path == str(
        paths[0]
    )

    saved = shared_tmp / "p.json.gz"
    save(profile, saved)
    assert load(saved) == profile


def test_unusable_profile_files_are_refused_with_the_reason(shared_tmp: Path) -> None:
    path = shared_tmp / "bad.json"
    path.write_text("{}")
    with pytest.raises(ProfileError, match="not a start-up profile"):
        load(path)
    path.write_text('{"format": "pagewarm-startup-profile", "schema": 99}')
    with pytest.raises(ProfileError, match="schema 99"):
        load(path)
    with pytest.raises(ProfileError, match="cannot read"):
        load(shared_tmp / "none.json")

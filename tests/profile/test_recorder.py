"""Recording a real engine process that imports a real synthetic tree: the profile lists
what it imported (and nothing it did not), in an order consistent with its imports, with
each file's identity; the shared objects as mapped; the weights left out."""

from __future__ import annotations

import json
import os
from importlib.util import cache_from_source
from pathlib import Path

import pytest

from controller.evict import evict
from controller.linux.pagecache import drop
from controller.profile.recorder import Recorder
from controller.profile.schema import ProfileKey, StartupProfile
from controller.profile.session import RecordError, RecordOptions, record_command
from exporter.residency import ResidencyProbe
from exporter.weightset import discover
from tests.engine import libtree
from tests.engine.run import engine_argv, engine_env, evict_tree
from tests.sidecar.pod import free_port

KEY = ProfileKey(engine="test-engine", model="tiny")
# A look at every watched file (the tree, the virtual environment, the standard library:
# some 40k files) takes the better part of a second on a busy 2-core VM; imports that take
# longer than that land in different rounds.
IMPORT_PAUSE_SECONDS = 0.25


def _record(
    tree: libtree.Tree, model: Path, tmp: Path
) -> tuple[StartupProfile, list[dict[str, object]]]:
    evict_tree(tree.site_packages)
    weights = discover(model)
    evict(weights, ResidencyProbe())
    events = tmp / "events.jsonl"
    argv = engine_argv(
        model,
        free_port(),
        events,
        tmp / "engine.log",
        "rec",
        "--exit-when-ready",
        "--init-seconds",
        "0.1",
        "--import-pause",
        str(IMPORT_PAUSE_SECONDS),
    )
    options = RecordOptions(
        key=KEY,
        interval_seconds=0.05,
        exclude=frozenset((f.device, f.inode) for f in weights.weight_files),
    )
    profile, status = record_command(argv, options, env=engine_env(tree.site_packages))
    assert status == 0
    return profile, [json.loads(line) for line in events.read_text().splitlines()]


@pytest.mark.slow
def test_the_profile_lists_the_imported_modules_in_import_order(
    tree: libtree.Tree, engine_model: Path, tmp_path: Path
) -> None:
    profile, events = _record(tree, engine_model, tmp_path)
    assert [e["event"] for e in events][-1] == "ready"
    by_path = {entry.path: entry for entry in profile.entries}
    site = str(tree.site_packages)

    # Every imported module's bytecode, and none of the packages never imported.
    def pyc(module: str) -> str:
        package, name = module.split(".")
        return cache_from_source(f"{site}/{package}/{name}.py")

    imported = [pyc(m) for m in tree.modules]
    missing = [p for p in imported if p not in by_path]
    # A margin of 1%: a page the engine read and the machine's DAMON reclaim paged out again
    # between two residency samples escapes a residency-delta recorder (seen once in 300
    # modules under the full suite); a recorder that misses imports fails this at once.
    assert len(missing) <= len(imported) // 100, (
        f"{len(missing)} of {len(imported)} imported modules not in the profile: {missing[:3]}"
    )
    # Files smaller than a page too (the probe reports their bytes, not a whole page): each
    # package's __init__ bytecode, and every distribution's RECORD, which
    # packages_distributions() reads (unused packages' included: they are installed).
    small = [cache_from_source(f"{site}/{package}/__init__.py") for package in tree.import_order]
    small += [f"{site}/{p}-1.0.dist-info/RECORD" for p in (*tree.import_order, *tree.unused)]
    assert all(Path(p).stat().st_size < profile.page_size for p in small)
    missing = [p for p in small if p not in by_path]
    assert len(missing) <= max(1, len(small) // 100), f"{len(missing)}/{len(small)}: {missing[:3]}"
    unused = [p for p in by_path if any(f"/{u}/" in p for u in tree.unused)]
    assert not unused, f"never imported, yet in the profile: {unused[:3]}"
    # Recorded as read (residency), with the identity the file has.
    entry = by_path[imported[0]]
    st = Path(imported[0]).stat()
    assert entry.seen_as == "read"
    assert (entry.identity.device, entry.identity.inode) == (st.st_dev, st.st_ino)
    assert (entry.identity.size, entry.identity.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert entry.pages == -(-st.st_size // profile.page_size)

    # The order: the round each package was first seen never goes back in import order,
    # and the imports were seen across several rounds (the order is not one bucket).
    first_round = {
        package: min(
            min(r for _, _, r in by_path[pyc(f"{package}.mod_{j:02d}")].ranges)
            for j in range(tree.shape.modules_per_package)
        )
        for package in tree.import_order
    }
    rounds = [first_round[p] for p in tree.import_order]
    assert rounds == sorted(rounds), rounds
    assert len(set(rounds)) >= 2, rounds
    positions = {entry.path: index for index, entry in enumerate(profile.entries)}
    first, last = tree.import_order[0], tree.import_order[-1]
    assert positions[pyc(f"{first}.mod_00")] < positions[pyc(f"{last}.mod_00")]

    # The shared objects: mapped, most of what the engine touched recorded.
    for relative in tree.shared_objects:
        so = by_path[f"{site}/{relative}"]
        assert so.seen_as == "mapped"
        touched = tree.shape.touched_fraction * so.identity.size
        assert so.pages * profile.page_size >= 0.95 * touched
    # The weights are the pre-warm's, never the profile's; their metadata (config) may be.
    weights = {str(f.path) for f in discover(engine_model).weight_files}
    assert not weights & set(by_path)
    assert profile.totals.entries == len(profile.entries)
    assert profile.recording.method == "residency"
    assert profile.recording.ended_by == "exit"


def test_a_command_that_fails_records_nothing(tmp_path: Path) -> None:
    options = RecordOptions(key=KEY, interval_seconds=0.05)
    with pytest.raises(RecordError, match="exited with status 3"):
        record_command(["python3", "-c", "raise SystemExit(3)"], options)


class ReadInFlight(ResidencyProbe):
    """The kernel's answers while a read is in flight, which a test cannot time: cachestat
    already counts the pages (in the cache, not yet up to date), mincore does not."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = False

    def cached_bytes(self, fd: int, offset: int, length: int) -> int | None:
        if self.in_flight:
            return max(0, min(length, os.fstat(fd).st_size - offset))
        return super().cached_bytes(fd, offset, length)


def test_a_look_during_a_read_does_not_hide_the_pages_it_brings(shared_tmp: Path) -> None:
    library = shared_tmp / "lib"
    library.mkdir()
    module = library / "module.pyc"
    module.write_bytes(os.urandom(3 * 4096 + 100))
    os.sync()
    fd = os.open(module, os.O_RDONLY)
    try:
        drop(fd)
        probe = ReadInFlight()
        recorder = Recorder(probe=probe)
        recorder.prepare([str(library)])  # the baseline: nothing resident
        probe.in_flight = True
        recorder.look()  # cachestat: all of it; mincore: none of it yet
        probe.in_flight = False
        os.pread(fd, module.stat().st_size, 0)  # the read completes
        recorder.look()
    finally:
        os.close(fd)
    profile = recorder.profile(KEY, ended_by="exit")
    recorder.close()
    found = [e for e in profile.entries if e.path == str(module)]
    assert len(found) == 1, "the read that a look fell into was never recorded"
    entry = found[0]
    assert entry.pages == 4
    assert entry.ranges[0][2] == 2  # seen in the second round, once mincore saw it

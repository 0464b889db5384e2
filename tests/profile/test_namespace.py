"""An engine in its own mount namespace, as in a pod: its library tree is visible only
inside (a bind mount), and the recorder and the replay reach it through
/proc/<pid>/root; from the host's root the same paths do not exist."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.linux.pagecache import drop
from controller.profile.replay import replay
from controller.profile.schema import ProfileKey, StartupProfile
from controller.profile.session import record_running
from exporter.linux.files import FileRoot
from exporter.linux.procfiles import mount_namespace, process_root
from exporter.residency import ResidencyProbe
from tests.sidecar.pod import wait_for

pytestmark = pytest.mark.root
MiB = 1 << 20
# Inside the namespace: wait for the go file, then read every library (open, read, close,
# as an import does), then say so and idle until killed.
ENGINE = """
import os, sys, time
libs, go, done = sys.argv[1], sys.argv[2], sys.argv[3]
while not os.path.exists(go):
    time.sleep(0.01)
for name in sorted(os.listdir(libs)):
    with open(os.path.join(libs, name), "rb") as handle:
        handle.read()
open(done, "w").close()
time.sleep(600)
"""


def _resident(path: Path) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return (ResidencyProbe().cached_bytes(fd, 0, size) or 0) / size
    finally:
        os.close(fd)


@pytest.fixture
def namespaced(shared_tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, Path]]:
    """(the engine, the hidden libraries' real directory, the path it sees them at, the
    directory of its go/done files)."""
    if os.geteuid() != 0:
        pytest.skip("mount namespaces need root")
    source = shared_tmp / "image-libs"
    source.mkdir()
    for index in range(6):
        (source / f"lib{index}.so").write_bytes(os.urandom(2 * MiB))
    os.sync()
    mount_point = shared_tmp / "opt-engine"  # empty on the host; the libraries inside
    mount_point.mkdir()
    signals = shared_tmp / "signals"
    signals.mkdir()
    script = (
        f"mount --bind {source} {mount_point} && "
        f"exec {sys.executable} -c '{ENGINE}' {mount_point} {signals}/go {signals}/done"
    )
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        env={**os.environ, "PYTHONPATH": str(mount_point)},
    )
    try:
        # Once exec'd, the engine's mount namespace is its own.
        wait_for(
            lambda: (
                mount_namespace(process.pid) not in (None, mount_namespace("self"))
                and "python" in Path(f"/proc/{process.pid}/comm").read_text()
            ),
            30,
            "the engine in its namespace",
        )
        yield process, source, mount_point, signals
    finally:
        process.kill()
        process.wait(30)


def test_record_and_replay_through_the_engines_root(
    namespaced: tuple[subprocess.Popen[bytes], Path, Path, Path],
) -> None:
    process, source, mount_point, signals = namespaced
    assert not list(mount_point.iterdir())  # hidden from the host
    libraries = sorted(source.iterdir())
    for path in libraries:
        fd = os.open(path, os.O_RDONLY)
        drop(fd)
        os.close(fd)

    # Record: the recorder watches the engine's PYTHONPATH through its root; the engine
    # reads its libraries; the profile names them as the engine sees them.
    stop = threading.Event()
    recorded: list[StartupProfile] = []
    thread = threading.Thread(
        target=lambda: recorded.append(
            record_running(
                process.pid, ProfileKey(engine="ns", model="m"), stop, interval_seconds=0.05
            )
        )
    )
    thread.start()
    (signals / "go").touch()
    wait_for((signals / "done").exists, 30, "the engine's reads")
    stop.set()  # the recorder looks once more, then stops
    thread.join(30)
    [profile] = recorded
    paths = {e.path for e in profile.entries}
    assert {str(mount_point / p.name) for p in libraries} <= paths

    # Replay from the host's root: the paths do not exist here; nothing is read.
    for path in libraries:
        fd = os.open(path, os.O_RDONLY)
        drop(fd)
        os.close(fd)
    with FileRoot("/") as host:
        missed = replay(profile, host)
    assert missed.missing_entries >= len(libraries)
    assert all(_resident(p) <= 0.05 for p in libraries)

    # Replay through /proc/<pid>/root: every library is read, the real files resident.
    with process_root(process.pid) as root:
        assert not root.own
        result = replay(profile, root)
    assert result.replayed_entries >= len(libraries)
    assert result.stale_entries == result.failed_entries == 0
    assert all(_resident(p) >= 0.95 for p in libraries)

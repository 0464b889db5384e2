"""The sidecar's parts on their own: gate decisions, mode labels, vLLM's log wordings, the
log follower and the process finder on real files and processes, one keep-warm pass."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from controller.sidecar.gate import Gate, GatePolicy, WarmPhase, WarmView, decide
from controller.sidecar.keepwarm import KeepWarm, PassResult
from controller.sidecar.modes import (
    START_TIME_RESOLUTION_SECONDS,
    WarmContext,
    label_mode,
    started_after_warm,
)
from controller.sidecar.vllm import compile_pattern
from controller.sidecar.vllm_log import LogFacts, LogTail, parse_log_line
from controller.synth import synth
from exporter.linux.proc import ProcessFinder, ProcessInfo, read_stat
from exporter.residency import ResidencyProbe
from exporter.samples import Mode
from exporter.weightset import discover
from tests.sidecar.pod import wait_for
from tests.support import evict_path

MiB = 1 << 20

# Gate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("full", "full"), ("NONE", "none"), ("ratio:0.8", "ratio:0.8"), (" ratio:1 ", "ratio:1")],
)
def test_gate_policies_parse(text: str, expected: str) -> None:
    assert str(GatePolicy.parse(text)) == expected


@pytest.mark.parametrize("text", ["", "ratio", "ratio:", "ratio:0", "ratio:1.5", "ratio:x", "80%"])
def test_bad_gate_policies_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"full, none, ratio:0\.8|ratio must be"):
        GatePolicy.parse(text)


def warm(phase: WarmPhase, fraction: float, detail: str | None = None) -> WarmView:
    return WarmView(phase, fraction, int(fraction * 100), 100, detail)


def test_gate_decisions() -> None:
    full, ratio, none = (GatePolicy.parse(p) for p in ("full", "ratio:0.5", "none"))
    assert decide(none, warm(WarmPhase.PENDING, 0), 0, 10).open
    assert not decide(full, warm(WarmPhase.WARMING, 0.9), 1, 10).open
    assert decide(full, warm(WarmPhase.DONE, 1), 1, 10).reason == "pre-warm complete"
    budget = decide(full, warm(WarmPhase.PARTIAL, 0.4, "memory budget reached: ..."), 1, 10)
    assert budget.open and "memory budget reached" in budget.reason
    failed = decide(full, warm(WarmPhase.FAILED, 0.4, "1 file(s) not warmed"), 1, 10)
    assert failed.open and "not held back" in failed.reason
    assert not decide(ratio, warm(WarmPhase.WARMING, 0.49), 1, 10).open
    assert decide(ratio, warm(WarmPhase.WARMING, 0.5), 1, 10).open
    late = decide(full, warm(WarmPhase.WARMING, 0.2), 10, 10)
    assert late.open and late.timed_out and "opened anyway" in late.reason
    assert decide(full, warm(WarmPhase.DISABLED, 0), 0, 10).open


def test_the_gate_stays_open_once_opened() -> None:
    gate = Gate(GatePolicy.parse("ratio:0.5"), 10)
    assert not gate.evaluate(warm(WarmPhase.WARMING, 0.1), 0.5)
    assert gate.evaluate(warm(WarmPhase.WARMING, 0.6), 1.0)
    assert gate.opened_after_seconds == 1.0
    assert not gate.evaluate(warm(WarmPhase.CANCELLED, 0.6), 2.0)  # already open
    assert gate.is_open


# Modes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at_start", "context", "expected"),
    [
        (0.0, None, (Mode.COLD, True)),
        (0.02, None, (Mode.COLD, True)),
        (0.96, None, (Mode.WARM, True)),
        (0.5, None, (Mode.PARTIAL, True)),
        (None, None, (Mode.PARTIAL, None)),
        (1.0, WarmContext(0.0, True), (Mode.PREWARM_COLD, True)),
        # gate none: vLLM started cold, the warm completed before vLLM was ready
        (0.01, WarmContext(0.0, True), (Mode.PREWARM_COLD, True)),
        # ... or not: vLLM read part of the weights itself
        (0.01, WarmContext(0.0, False), (Mode.PARTIAL, True)),
        (1.0, WarmContext(0.99, True), (Mode.PREWARM_WARM, True)),
        (1.0, WarmContext(0.5, True), (Mode.PARTIAL, True)),
        (1.0, WarmContext(None, True), (Mode.PARTIAL, None)),
    ],
)
def test_mode_labels(
    at_start: float | None, context: WarmContext | None, expected: tuple[Mode, bool | None]
) -> None:
    assert label_mode(at_start, context) == expected


# vLLM's log ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "facts"),
    [
        (
            "INFO 05-12 10:00:00 [gpu_model_runner.py:1234] Model loading took 14.9888 GiB and "
            "5.123456 seconds",
            LogFacts(5.123456, 14.9888, None),
        ),
        (
            "(VllmWorker rank=1 pid=77) INFO 06-01 08:00:00 [gpu_model_runner.py:1] Model loading "
            "took 7.5 GiB memory and 12.3 seconds",
            LogFacts(12.3, 7.5, None),
        ),
        (
            "INFO 05-12 10:00:00 model_runner.py:1115] Loading model weights took 12.5523 GB",
            LogFacts(None, 12.5523, None),
        ),
        (
            "INFO 05-12 10:00:00 [default_loader.py:262] Loading weights took 3.45 seconds",
            LogFacts(None, None, 3.45),
        ),
        ("INFO Loading weights took 3.45 seconds (progressive)", LogFacts(None, None, 3.45)),
        ("INFO Starting to load model /models/x...", None),
        ("INFO Model loading took forever", None),
    ],
)
def test_vllm_log_wordings(line: str, facts: LogFacts | None) -> None:
    assert parse_log_line(line) == facts


def test_log_facts_split_weights_from_the_rest() -> None:
    facts = (
        LogFacts(6.0, 15.0, None).merge(LogFacts(None, None, 4.0)).merge(LogFacts(5.0, 14, None))
    )
    assert facts == LogFacts(6.0, 15.0, 4.0)  # the largest of the ranks' figures
    fields = facts.sample_fields(20.0)
    assert fields["vllm_weights_seconds"] == 4.0 and fields["vllm_other_seconds"] == 16.0
    assert LogFacts(6.0, 15.0, None).sample_fields(20.0)["vllm_weights_seconds"] == 6.0


def test_log_tail_follows_appends_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text("INFO Model loading took 1.0 GiB and 9.0 seconds\n")  # an earlier start
    tail = LogTail(log)
    tail.mark()
    assert tail.read_lines() == []
    with log.open("a") as handle:
        handle.write("INFO Loading weights took 2.5 seconds\nINFO half a li")
    assert tail.read_lines() == ["INFO Loading weights took 2.5 seconds"]
    with log.open("a") as handle:
        handle.write("ne\n")
    assert tail.read_lines() == ["INFO half a line"]
    # Rotation (RotatingFileHandler): the rest of the old file first, then the new one.
    with log.open("a") as handle:
        handle.write("INFO last words of the old file\n")
    log.rename(tmp_path / "vllm.log.1")
    log.write_text("INFO Model loading took 3.0 GiB and 4.0 seconds\n")
    assert tail.read_lines() == [
        "INFO last words of the old file",
        "INFO Model loading took 3.0 GiB and 4.0 seconds",
    ]
    # Truncation: read again from the start.
    log.write_text("INFO Loading weights took 1.5 seconds\n")
    assert tail.read_facts() == LogFacts(None, None, 1.5)
    tail.close()


def test_log_tail_of_a_file_that_appears_later(tmp_path: Path) -> None:
    tail = LogTail(tmp_path / "later.log")
    tail.mark()
    assert tail.read_lines() == []
    (tmp_path / "later.log").write_text("INFO Model loading took 2.0 GiB and 1.0 seconds\n")
    assert tail.read_facts() == LogFacts(1.0, 2.0, None)
    tail.close()


# /proc ---------------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def test_process_finder_sees_starts_not_children_and_not_itself(tmp_path: Path) -> None:
    children: list[int] = []
    tag = uuid.uuid4().hex[:10]
    pattern = compile_pattern(rf"sleeper-{tag}")
    assert pattern is not None
    finder = ProcessFinder(pattern)
    assert finder.scan() == []
    # A parent and its child, both matching: only the parent is a start.
    child = f"[sys.executable, '-c', 'import time; time.sleep(60)', 'sleeper-{tag}']"
    code = f"import subprocess, sys, time; subprocess.Popen({child}); time.sleep(60)"
    spawned_at = time.monotonic()
    parent = subprocess.Popen([sys.executable, "-c", code, f"sleeper-{tag}"])
    try:
        found = wait_for(
            lambda: [p for p in finder.scan() if p.pid == parent.pid] or None, 10, "the parent"
        )
        assert len(finder.scan()) == 1
        # Its start time from /proc, within a clock tick (10 ms) and the fork.
        assert abs(found[0].started_monotonic() - spawned_at) < 0.1
        assert finder.alive(found[0])
        children = wait_for(lambda: children_of(parent.pid), 10, "the child")
        parent.kill()
        parent.wait()
        assert not finder.alive(found[0])
    finally:
        for pid in children_of(parent.pid) if parent.poll() is None else children:
            os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def forked_not_execed() -> list[int]:
    """This process's children that have not exec'd yet."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    stats = ((pid, read_stat(pid)) for pid in pids)
    return [pid for pid, s in stats if s and s.ppid == os.getpid() and not s.execed]


def test_process_finder_sees_a_start_it_first_looked_at_before_its_exec() -> None:
    """Between its fork and its exec a process shows its parent's command line, with the
    start ticks it keeps after: a scan then must not hide it for good (the sidecar's
    engine went unseen once, its start timed from the gate, neither recorded nor replayed)."""
    pattern = compile_pattern(rf"sleeper-{uuid.uuid4().hex[:10]}")
    assert pattern is not None
    finder = ProcessFinder(pattern)
    hold, release = os.pipe()
    argv = [sys.executable, "-c", "import time; time.sleep(60)", pattern.pattern]
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn() -> None:  # Popen returns after the exec, which waits for a byte
        exec_later = functools.partial(os.read, hold, 1)
        spawned.append(subprocess.Popen(argv, preexec_fn=exec_later))  # noqa: PLW1509 - no lock

    spawner = threading.Thread(target=spawn)
    spawner.start()
    try:
        wait_for(forked_not_execed, 10, "the fork")
        assert finder.scan() == []
        assert forked_not_execed()  # so the scan saw it before its exec
        os.write(release, b"x")
        spawner.join(30)
        assert [p.pid for p in finder.scan()] == [spawned[0].pid]
    finally:
        os.write(release, b"x")
        spawner.join(30)
        for process in spawned:
            process.kill()
            process.wait()
        os.close(hold)
        os.close(release)


def command_name(pid: int) -> str | None:
    stat = read_stat(pid)
    return stat.comm if stat is not None else None


def test_process_finder_sees_a_process_that_execs_into_a_match() -> None:
    """An entrypoint script that ends in `exec vllm serve ...`: the finder first sees the
    shell (no match), then vLLM, with the same pid and start ticks."""
    mark = uuid.uuid4().hex[:10]
    pattern = compile_pattern(f"sleeper-{mark}")
    assert pattern is not None
    finder = ProcessFinder(pattern)
    # The shell's own command line holds `sleeper-$2` and the mark apart: no match.
    script = 'read _; exec "$1" -c "import time; time.sleep(60)" "sleeper-$2"'
    argv = ["sh", "-c", script, "sh", sys.executable, mark]
    with subprocess.Popen(argv, stdin=subprocess.PIPE) as shell:
        try:
            wait_for(lambda: command_name(shell.pid) == "sh", 10, "the shell")
            assert finder.scan() == []  # the shell, looked at and remembered as a miss
            assert shell.stdin is not None
            shell.stdin.write(b"\n")
            shell.stdin.flush()
            wait_for(lambda: command_name(shell.pid) not in (None, "sh"), 10, "the exec")
            assert [p.pid for p in finder.scan()] == [shell.pid]
        finally:
            shell.kill()
            shell.wait()


def test_a_start_right_after_the_warm_began_is_the_one_it_was_for() -> None:
    """/proc rounds a process's start down to a clock tick (10 ms): spawned right after the
    warm began (--gate none, the port answering at once), vLLM can look older than the
    warm. It is still the start the warm was for; one a tick and more older is not."""
    looked_older = 0
    for _ in range(20):
        warm_began = time.monotonic()
        process = subprocess.Popen(["sleep", "30"])
        try:
            stat = read_stat(process.pid)
            assert stat is not None
            started = ProcessInfo(
                process.pid, stat.ppid, stat.state, stat.start_ticks, ""
            ).started_monotonic()
        finally:
            process.kill()
            process.wait()
        looked_older += started < warm_began
        assert started_after_warm(warm_began, started)
        assert not started_after_warm(warm_began, started - 2 * START_TIME_RESOLUTION_SECONDS)
    assert looked_older > 0  # the rounding showed, so the rule above was what held


def test_empty_pattern_means_do_not_look() -> None:
    assert compile_pattern("") is None
    with pytest.raises(ValueError, match="not a regular expression"):
        compile_pattern("(")


# Keep-warm -----------------------------------------------------------------------------------


def test_one_keep_warm_pass_reads_back_exactly_the_evicted_windows(tmp_path: Path) -> None:
    model = tmp_path / "model"
    synth(model, 24 * MiB, shards=2)
    ws = discover(model)
    probe = ResidencyProbe()
    keeper = KeepWarm(
        ws,
        probe,
        interval_seconds=1,
        rate_limit_bytes_per_second=1 << 40,
        reserve_bytes=0,
        memory_guard=True,
        cancel=threading.Event(),
    )
    for f in ws.files:
        f.path.read_bytes()
    shard = ws.weight_files[0].path
    fd = os.open(shard, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 2 * MiB, 2 * MiB, os.POSIX_FADV_DONTNEED)
        result = keeper.run_pass()
        back = probe.cached_bytes(fd, 2 * MiB, 2 * MiB)
        assert back is not None and back >= 0.95 * 2 * MiB
    finally:
        os.close(fd)
    # 2 MiB evicted, 2 MiB read back (plus whatever DAMON took meanwhile: a few pages).
    assert 2 * MiB <= result.missing_bytes < 3 * MiB
    assert result.rewarmed_bytes == result.missing_bytes
    assert result.budget_stop is None and not result.untrusted and not result.errors
    assert not keeper.thrashing and keeper.interval == 1
    evict_path(model)
    cancelled = threading.Event()
    cancelled.set()
    keeper.cancel = cancelled
    assert keeper.run_pass().rewarmed_bytes == 0  # a cancelled pass reads nothing


def test_keep_warm_backs_off_while_what_it_brings_back_is_evicted_again() -> None:
    keeper = KeepWarm(
        discover(Path(__file__)),
        ResidencyProbe(),
        interval_seconds=2,
        rate_limit_bytes_per_second=1,
        reserve_bytes=0,
        memory_guard=False,
        cancel=threading.Event(),
    )

    def after(missing: int, rewarmed: int, recently: int | None) -> tuple[bool, float]:
        keeper.adapt(PassResult(missing, rewarmed, recently, None, (), False, 0.0))
        return keeper.thrashing, keeper.interval

    assert after(64 * MiB, 64 * MiB, 0) == (False, 2)  # a first eviction: no thrash
    assert after(64 * MiB, 64 * MiB, 60 * MiB) == (True, 4)  # evicted again, recently
    assert after(64 * MiB, 64 * MiB, 60 * MiB) == (True, 8)
    assert after(64 * MiB, 64 * MiB, 60 * MiB) == (True, 16)
    assert after(64 * MiB, 64 * MiB, 60 * MiB) == (True, 16)  # at most 8x the interval
    assert after(1 * MiB, 1 * MiB, 1 * MiB) == (False, 2)  # quiet again
    # A few pages taken by DAMON now and then are no thrash.
    assert after(1 * MiB, 1 * MiB, 1 * MiB) == (False, 2)
    assert after(64 * MiB, 64 * MiB, 0) == (False, 2)
    assert after(64 * MiB, 64 * MiB, None) == (False, 2)  # no cachestat: cannot tell

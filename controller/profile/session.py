"""Recording a start-up: a command launched for it (``pagewarm profile record -- CMD``), or
an engine already running (the sidecar), until it is ready, exits, or time runs out.

A launched command's interpreter is known before it starts (its first word, PYTHONPATH),
so those roots are watched first: the baseline is taken before the command reads a byte,
and everything it reads there is seen. The engine is ready when ``ready_url`` answers
200 (a server) or when it exits with status 0 (a script that loads and ends).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.profile import roots as library
from controller.profile.recorder import DEFAULT_INTERVAL_SECONDS, Recorder
from controller.profile.schema import ProfileKey, StartupProfile
from exporter.linux.files import FileRoot
from exporter.linux.proc import PROC

POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 10.0


class RecordError(Exception):
    """The start-up could not be recorded (printed for the user, exit status 1)."""


@dataclass(frozen=True, slots=True)
class RecordOptions:
    key: ProfileKey
    ready_url: str | None = None  # None: the command's exit (status 0) ends the start-up
    timeout_seconds: float = 1800.0
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    exclude: frozenset[tuple[int, int]] = frozenset()  # (device, inode): the weights
    roots: tuple[str, ...] = ()  # more library roots to watch from the start
    stop_when_ready: bool = True  # terminate a server once it is ready


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - the user's URL
            return int(response.status) == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


def _program_roots(argv0: str, environ: Mapping[str, str]) -> list[str]:
    """The library roots of a command about to start: its interpreter's, PYTHONPATH."""
    found = shutil.which(argv0, path=environ.get("PATH"))
    if found is None:
        return []
    with FileRoot("/") as root:
        return library.python_roots(root, os.path.realpath(found), found, environ)


def record_command(
    argv: Sequence[str],
    options: RecordOptions,
    *,
    env: Mapping[str, str] | None = None,
    on_round: Callable[[Recorder], None] | None = None,
) -> tuple[StartupProfile, int | None]:
    """Launch ``argv``, record its start-up; (the profile, its exit status or None when it
    was still running and was stopped)."""
    environ = dict(os.environ if env is None else env)
    if not argv:
        raise RecordError("no command to record: give it after --")
    recorder = Recorder(exclude=options.exclude, interval_seconds=options.interval_seconds)
    try:
        recorder.prepare([*_program_roots(argv[0], environ), *options.roots])
        try:
            process = subprocess.Popen(list(argv), env=environ, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise RecordError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        try:
            recorder.attach(process.pid)
            ended_by = _follow(recorder, process, options, on_round)
        finally:
            status = _stop(process, options)
        return recorder.profile(options.key, ended_by=ended_by, command=argv), status
    finally:
        recorder.close()


def _follow(
    recorder: Recorder,
    process: subprocess.Popen[bytes],
    options: RecordOptions,
    on_round: Callable[[Recorder], None] | None,
) -> str:
    """Rounds until the start-up ended; how it ended."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def rounds() -> None:
        try:
            recorder.run(stop)
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)
            stop.set()

    thread = threading.Thread(target=rounds, name="pagewarm-record", daemon=True)
    thread.start()
    deadline = time.monotonic() + options.timeout_seconds
    ended_by = "timeout"
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if process.poll() is not None:
                ended_by = "exit"
                break
            if options.ready_url and _answers_200(options.ready_url):
                ended_by = "ready"
                break
            if on_round is not None:
                on_round(recorder)
            time.sleep(POLL_SECONDS)
    finally:
        stop.set()
        thread.join()
    if failure:
        raise RecordError(f"recording failed: {failure[0]}") from failure[0]
    if ended_by == "exit" and (process.returncode != 0 or options.ready_url):
        raise RecordError(
            f"the command exited with status {process.returncode} before it was ready"
        )
    if ended_by == "timeout":
        raise RecordError(f"the start-up did not end within {options.timeout_seconds:g} s")
    return ended_by


def _stop(process: subprocess.Popen[bytes], options: RecordOptions) -> int | None:
    """Stop a server that is still running (SIGTERM, then SIGKILL after a grace)."""
    if process.poll() is not None:
        return process.returncode
    if not options.stop_when_ready:
        return None
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return None


def record_running(
    pid: int,
    key: ProfileKey,
    stop: threading.Event,
    *,
    exclude: Iterable[tuple[int, int]] = (),
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    proc: Path = PROC,
) -> StartupProfile:
    """Record a running engine (blocking: in a thread) until ``stop`` is set."""
    recorder = Recorder(exclude=exclude, interval_seconds=interval_seconds, proc=proc)
    try:
        recorder.attach(pid)
        recorder.run(stop)
        return recorder.profile(key, ended_by="ready")
    finally:
        recorder.close()

"""Timing loads that pagewarm does not do itself: until a URL answers 200 (vLLM's
``/health``), measured from the start of a command or from now; or a command to its exit.

Commands run in a session of their own, so that on a timeout or an interrupt the whole
process group is stopped (SIGTERM, then SIGKILL after a grace period), never left behind.
Their output goes to our stderr, keeping stdout free for ``--json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from exporter.samples import Outcome

DEFAULT_POLL_INTERVAL_SECONDS = 0.1
STOP_GRACE_SECONDS = 10.0
# One probe of the URL may take this long at most (a hung server must not stall the clock).
PROBE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Timing:
    seconds: float
    outcome: Outcome
    error: str | None = None
    exit_code: int | None = None


def describe_command(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def start_command(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    if not argv:
        raise ValueError("empty command")
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=_stderr_fd(),
            start_new_session=True,  # its own process group: stopped as a whole
        )
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stderr (a test's capture)
        return None


class CommandError(Exception):
    """The command could not be started at all (not found, not executable)."""


def stop_process_group(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the command's process group, SIGKILL it after ``grace`` seconds."""
    if process.poll() is not None:
        _kill_group(process.pid, signal.SIGKILL)  # reap what it may have left running
        return
    _kill_group(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid, signal.SIGKILL)
        process.wait()


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def time_command(argv: Sequence[str], timeout: float) -> Timing:
    """Run ``argv`` to its exit: ok on status 0, failed otherwise, timed_out (and stopped)
    past ``timeout`` seconds."""
    started = time.perf_counter()
    process = start_command(argv)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        seconds = time.perf_counter() - started
        stop_process_group(process)
        return Timing(seconds, Outcome.TIMED_OUT, f"still running after {timeout:g} s: stopped")
    finally:
        if process.poll() is None:  # interrupted: never leave the command behind
            stop_process_group(process)
    seconds = time.perf_counter() - started
    _kill_group(process.pid, signal.SIGKILL)  # children it left in its group
    if code != 0:
        return Timing(seconds, Outcome.FAILED, _describe_exit(code), code)
    return Timing(seconds, Outcome.OK, exit_code=0)


def time_url(
    url: str,
    command: Sequence[str] | None = None,
    *,
    timeout: float,
    interval: float = DEFAULT_POLL_INTERVAL_SECONDS,
    keep_running: bool = False,
) -> Timing:
    """Seconds until ``url`` answers 200, from the start of ``command`` (started here) or
    from now. A command that exits first fails the timing. The command is stopped
    afterwards unless ``keep_running``."""
    started = time.perf_counter()
    process = start_command(command) if command else None
    try:
        return asyncio.run(_poll(url, started, timeout, interval, process))
    finally:
        if process is not None and not keep_running:
            stop_process_group(process)


async def _poll(
    url: str,
    started: float,
    limit_seconds: float,
    interval: float,
    process: subprocess.Popen[bytes] | None,
) -> Timing:
    last = "no answer yet"
    probe_timeout = aiohttp.ClientTimeout(total=min(PROBE_TIMEOUT_SECONDS, max(limit_seconds, 0.1)))
    async with aiohttp.ClientSession(timeout=probe_timeout) as session:
        while True:
            try:
                async with session.get(url, allow_redirects=False) as response:
                    if response.status == 200:
                        return Timing(time.perf_counter() - started, Outcome.OK)
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = str(exc) or type(exc).__name__
            elapsed = time.perf_counter() - started
            if process is not None and (code := process.poll()) is not None:
                return Timing(
                    elapsed,
                    Outcome.FAILED,
                    f"command {_describe_exit(code)} before {url} answered 200 (last: {last})",
                    code,
                )
            if elapsed >= limit_seconds:
                return Timing(
                    elapsed,
                    Outcome.TIMED_OUT,
                    f"{url} did not answer 200 within {limit_seconds:g} s (last: {last})",
                )
            await asyncio.sleep(min(interval, max(0.0, limit_seconds - elapsed)))

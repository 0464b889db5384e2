"""The sidecar's start-up profile: replayed ahead of vLLM when one exists for its key,
recorded on vLLM's first start when none does (``controller.profile``).

vLLM's files live in its container's filesystem: they are opened through
``/proc/<vLLM's pid>/root``, so nothing happens before vLLM's process is seen (the pod
needs ``shareProcessNamespace: true``, and the sidecar ptrace read access to vLLM: its
user, or CAP_SYS_PTRACE). The key is the engine (``--engine-image``, the chart sets vLLM's
image) and the model; ``--startup-profile`` names a file, or a directory where the file
is named after the key (a volume shared by pods of several images and models).

A recording starts when vLLM's first start is seen and ends when that start is ready (a
failed start records nothing); it is written only where the path is writable (a
ConfigMap is not: the log says how to create one from the recording).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from pathlib import Path

import structlog

from controller.memguard import MemoryGuard
from controller.prewarm import PrewarmResult, Strategy, prewarm
from controller.profile.replay import STEP_BYTES, ReplayProgress, ReplayResult, replay
from controller.profile.schema import (
    ProfileError,
    ProfileKey,
    StartupProfile,
    load,
    outdated_reason,
    save,
)
from controller.profile.session import record_running
from controller.sidecar.settings import SidecarConfig
from controller.sidecar.state import ProfilePhase, StartupProfileState
from controller.units import format_bytes
from exporter.linux.proc import ProcessInfo
from exporter.linux.procfiles import (
    ProcessAccessError,
    process_root,
    uses_any,
)
from exporter.residency import ResidencyProbe

log = structlog.get_logger("pagewarm")

# With --gate none the profile goes first, and waits this long for vLLM's process before
# the weights go first instead (the profile then follows when vLLM shows up).
ENGINE_WAIT_SECONDS = 60.0
WAIT_TICK_SECONDS = 0.05
# The replay found this much of the profile missing: vLLM's libraries were cold, so its
# imports read from the disk for a while yet.
COLD_LIBRARIES_FRACTION = 0.25
# How long the weights stay at a small I/O depth, at most, waiting for vLLM to open them.
HOLD_WEIGHTS_SECONDS = 300.0


def profile_path(configured: Path, key: ProfileKey) -> Path:
    """The file for ``key``: ``configured`` itself, or a file named after the key in it."""
    return configured / key.file_name() if configured.is_dir() else configured


class StartupProfiler:
    def __init__(
        self,
        config: SidecarConfig,
        state: StartupProfileState,
        *,
        probe: ResidencyProbe,
        cancel: threading.Event,
    ) -> None:
        settings = config.settings
        self.config = config
        self.state = state
        self.probe = probe
        self.cancel = cancel
        self.key = ProfileKey(engine=settings.engine_image, model=config.model)
        self.path = (
            profile_path(settings.startup_profile, self.key) if settings.startup_profile else None
        )
        self.profile: StartupProfile | None = None
        self._engine: ProcessInfo | None = None
        self._engine_seen = asyncio.Event()
        self._record_stop = threading.Event()
        self._recording: asyncio.Task[None] | None = None
        self._record_keep = False  # the recorded start became ready
        self._late: asyncio.Task[bool] | None = None
        self.replayed = False

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def load(self) -> None:
        """Read the profile for the key, if there is one (an unusable one is reported)."""
        if self.path is None:
            return
        self.state.path, self.state.key = str(self.path), self.key.name
        self.state.phase = ProfilePhase.WAITING
        if not self.path.exists():
            self._none_yet("no start-up profile recorded for this key yet")
            return
        try:
            profile = load(self.path)
        except ProfileError as exc:
            self._none_yet(str(exc))
            return
        if profile.key != self.key:
            self._none_yet(f"the profile at {self.path} was recorded for {profile.key.name}")
            return
        if (outdated := outdated_reason(profile)) is not None:
            if self.config.settings.startup_profile_record:
                self._none_yet(outdated)  # this start records a complete one
                return
            log.warning("start-up profile outdated: replayed as it is", reason=outdated)
        self.profile = profile
        log.info(
            "start-up profile loaded",
            path=str(self.path),
            key=self.key.name,
            entries=profile.totals.entries,
            bytes=profile.totals.bytes,
        )

    def _none_yet(self, why: str) -> None:
        record = self.config.settings.startup_profile_record
        self.state.detail = why + ("; this start will be recorded" if record else "")
        if not record:
            self.state.phase = ProfilePhase.UNAVAILABLE
        log.info("no start-up profile to replay", reason=self.state.detail, path=str(self.path))

    # vLLM -----------------------------------------------------------------------------------

    def engine_started(self, process: ProcessInfo | None) -> None:
        """vLLM's first timed start: replay (the warm is waiting) or record."""
        if not self.enabled or self._engine_seen.is_set() or process is None:
            return
        self._engine = process
        self._engine_seen.set()
        if self.profile is None and self.config.settings.startup_profile_record:
            self._recording = asyncio.create_task(self._record(process), name="record")

    def engine_finished(self, *, ready: bool) -> None:
        """The start the recording follows ended: keep the recording only if ready."""
        if self._recording is not None and not self._record_stop.is_set():
            self._record_keep = ready
            self._record_stop.set()

    def replay_later(self) -> None:
        """Replay once vLLM's process shows up (not waited for: keep-warm goes on)."""
        if self.profile is not None and not self.replayed and self._late is None:
            self._late = asyncio.create_task(self.replay(None), name="replay")

    async def replay(self, wait_seconds: float | None) -> bool:
        """Replay once vLLM's process is seen (up to ``wait_seconds``; None: until it is, or
        the warm is cancelled); True when it was replayed."""
        if self.profile is None or self.replayed:
            return False
        if not await self._wait_engine(wait_seconds):
            return False
        assert self._engine is not None
        self.replayed = True
        state = self.state
        state.phase, state.progress = ProfilePhase.REPLAYING, ReplayProgress()
        try:
            result = await asyncio.to_thread(self._replay, self._engine.pid, state.progress)
        except (ProcessAccessError, OSError) as exc:
            state.phase, state.detail = ProfilePhase.FAILED, f"cannot replay: {exc}"
            log.warning("start-up profile not replayed", reason=state.detail)
            return False
        state.result, state.phase = result, ProfilePhase.REPLAYED
        log.info(
            "start-up profile replayed",
            read_bytes=result.read_bytes,
            seconds=round(result.seconds, 3),
            stale_entries=result.stale_entries,
            missing_entries=result.missing_entries,
            failed_entries=result.failed_entries,
            looked_up_paths=result.looked_up_paths,
            io_depth=result.io_depth,
            **({"problems": list(result.problems)} if result.problems else {}),
        )
        return True

    def _replay(self, pid: int, progress: ReplayProgress) -> ReplayResult:
        assert self.profile is not None
        guard = MemoryGuard(self.config.reserve_bytes, enabled=self.config.memory_guard)
        with process_root(pid) as root:
            return replay(
                self.profile,
                root,
                io_depth=self.config.settings.startup_profile_io_depth,
                probe=self.probe,
                guard=guard,
                cancel=self.cancel,
                progress=progress,
            )

    async def hold_weights(self) -> None:
        """After a replay that found vLLM's libraries cold: read the weights only at the
        profile's small I/O depth, readahead off, until vLLM opens or maps them (then the
        full-speed warm takes the rest) or they are all in.

        Measured (bench/gpu/startup_diag.py, an H100 box, all cold): a full-speed warm
        beside the imports made them 15-16 s instead of 7 (the importer's small reads, and
        metadata no profile holds, queue behind large ones); at depth 2 they took 9.3 s
        while the weights still came in at 1.1 GiB/s. transformers then spends some 10 s
        on the CPU before it opens its checkpoint, so the weights were all in before it
        did. vLLM's own reads pausing is no sign that its imports are over: with its
        libraries replayed they read little, and an earlier rule that went to full speed
        on a 0.25 s pause did so in the middle of them."""
        result, engine = self.state.result, self._engine
        if result is None or engine is None or not result.planned_bytes:
            return
        if result.read_bytes < COLD_LIBRARIES_FRACTION * result.planned_bytes:
            return  # the libraries were resident: the imports do not wait for the disk
        weights = frozenset((f.device, f.inode) for f in self.config.weight_set.weight_files)
        began = time.monotonic()
        self.state.detail = "libraries were cold: weights at a small I/O depth while vLLM imports"
        done = threading.Event()
        gentle = asyncio.create_task(asyncio.to_thread(self._gentle_warm, done))
        loading = asyncio.create_task(self._until_loading(engine.pid, weights, began))
        try:
            await asyncio.wait({gentle, loading}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.set()
            loading.cancel()
        try:
            gently = await gentle
        except Exception as exc:  # the full-speed warm still runs: say why this part did not
            log.exception("small-depth weights read failed", error=str(exc))
            return
        why = loading.result() if loading.done() and not loading.cancelled() else "all read"
        self.state.weights_read_bytes = gently.read_bytes
        log.info(
            "weights read at a small I/O depth while vLLM imported",
            seconds=round(time.monotonic() - began, 3),
            until=why,
            read_bytes=gently.read_bytes,
            io_depth=gently.threads,
        )

    def _gentle_warm(self, stop: threading.Event) -> PrewarmResult:
        """The weights in load order, ``io_depth`` reads of STEP_BYTES in flight, until
        ``stop``: what is resident by then, the full-speed warm skips."""
        options = dataclasses.replace(
            self.config.options,
            strategy=Strategy.READ,
            threads=self.config.settings.startup_profile_io_depth,
            chunk_bytes=STEP_BYTES,
            readahead=False,
        )
        guard = MemoryGuard(self.config.reserve_bytes, enabled=self.config.memory_guard)
        return prewarm(self.config.weight_set, options, probe=self.probe, guard=guard, cancel=stop)

    async def _until_loading(
        self, pid: int, weights: frozenset[tuple[int, int]], began: float
    ) -> str:
        """Why the small I/O depth ends: vLLM opened or mapped its weights, or is gone."""
        try:
            while not self.cancel.is_set() and time.monotonic() - began < HOLD_WEIGHTS_SECONDS:
                if await asyncio.to_thread(uses_any, pid, weights):
                    return "vLLM reads its weights"
                await asyncio.sleep(WAIT_TICK_SECONDS)
        except ProcessAccessError:
            return "vLLM's process is gone or not readable"
        return "cancelled" if self.cancel.is_set() else "timeout"

    async def _wait_engine(self, seconds: float | None) -> bool:
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._engine_seen.is_set():
            if self.cancel.is_set() or (deadline is not None and time.monotonic() > deadline):
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._engine_seen.wait(), WAIT_TICK_SECONDS)
        return True

    async def _record(self, process: ProcessInfo) -> None:
        state = self.state
        state.phase = ProfilePhase.RECORDING
        exclude = frozenset((f.device, f.inode) for f in self.config.weight_set.weight_files)
        log.info("recording vLLM's start-up", pid=process.pid, key=self.key.name)
        try:
            profile = await asyncio.to_thread(
                record_running, process.pid, self.key, self._record_stop, exclude=exclude
            )
        except (ProcessAccessError, OSError) as exc:
            state.phase, state.detail = ProfilePhase.FAILED, f"cannot record: {exc}"
            log.warning("start-up not recorded", reason=state.detail)
            return
        if not self._record_keep:
            state.phase, state.detail = ProfilePhase.UNAVAILABLE, "the recorded start failed"
            return
        assert self.path is not None
        try:
            written = await asyncio.to_thread(save, profile, self.path)
        except (OSError, ProfileError) as exc:
            state.phase = ProfilePhase.FAILED
            state.detail = (
                f"recorded, but cannot write {self.path} ({exc}): mount a writable volume "
                "there, or keep the profile in a ConfigMap (pagewarm profile record, then "
                "kubectl create configmap --from-file)"
            )
            log.warning("start-up profile not written", reason=state.detail)
            return
        state.phase = ProfilePhase.RECORDED
        state.recorded_entries, state.recorded_bytes = profile.totals.entries, profile.totals.bytes
        log.info(
            "start-up profile recorded",
            path=str(self.path),
            entries=profile.totals.entries,
            size=format_bytes(profile.totals.bytes),
            file_bytes=written,
            unattributed_resident_bytes=profile.totals.unattributed_resident_bytes,
        )

    async def close(self) -> None:
        self.cancel.set()
        self._record_stop.set()
        tasks = [t for t in (self._recording, self._late) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

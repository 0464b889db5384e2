"""The start-up benchmark's procedure, shared by bench/sidecar_bench.py and the CI analog
test: put the page cache in one of three states, start the realistic engine alone or
beside the real sidecar, and time it from its spawn to its first /health 200.

Cache states:
- ``warm``: libraries and weights resident (the engine ran before; the weights warmed);
- ``weights_cold``: the weights evicted, the libraries resident;
- ``all_cold``: both evicted: the synthetic libraries and the weights with
  POSIX_FADV_DONTNEED (nothing else on the host touched), or, with ``drop_caches``
  (opt-in, root: the GPU box), the whole page cache, dentries and inodes.

Variants: ``none`` (the engine alone), ``weights`` (the sidecar pre-warms the weights
beside it, ``--gate none``), ``profile`` (the same with ``--startup-profile``: the
engine's libraries first at a small I/O depth, then the weights).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.evict import evict
from controller.prewarm import prewarm
from controller.profile.replay import replay
from controller.profile.schema import ProfileKey, load, save
from controller.profile.session import RecordOptions, record_command
from exporter.linux.files import FileRoot
from exporter.models import ModelSpec
from exporter.residency import ResidencyProbe
from exporter.weightset import WeightSet
from tests.engine.run import engine_argv, engine_env, engine_pattern, evict_tree, start_engine
from tests.sidecar.pod import FakeVllm, Sidecar, free_port, http_get, start_sidecar, wait_for

STATES = ("warm", "weights_cold", "all_cold")
VARIANTS = ("none", "weights", "profile")
ENGINE_IMAGE = "pagewarm-engine"
POLL_SECONDS = 0.01


@dataclass
class Run:
    state: str
    variant: str
    seconds: float  # the engine's spawn -> its first /health 200 (this process's clock)
    own_seconds: float  # the engine's own start -> ready (its events)
    sample: dict[str, Any] = field(default_factory=dict)  # the sidecar's load sample
    phases: dict[str, float] = field(default_factory=dict)  # engine event -> s after start


@dataclass
class Startup:
    weight_set: WeightSet
    workdir: Path
    site_packages: Path | None  # the synthetic libraries (None: the engine imports real ones)
    engine_args: tuple[str, ...] = ()
    drop_caches: bool = False
    profile: Path | None = None
    timeout: float = 600.0

    @property
    def key(self) -> ProfileKey:
        return ProfileKey(engine=ENGINE_IMAGE, model=ModelSpec(self.weight_set.root, None).label)

    # Cache states ---------------------------------------------------------------------------

    def set_state(self, state: str) -> None:
        probe = ResidencyProbe()
        if state == "all_cold" and self.drop_caches:
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        elif state == "all_cold":
            if self.site_packages is not None:
                evict_tree(self.site_packages)
            evict(self.weight_set, probe)
        elif state == "weights_cold":
            self._libraries_resident()
            evict(self.weight_set, probe)
        else:
            self._libraries_resident()
            prewarm(self.weight_set, probe=probe)
        ratio = probe.measure(self.weight_set).ratio
        expected_warm = state == "warm"
        if ratio is None or (ratio < 0.95 if expected_warm else ratio > 0.02):
            raise RuntimeError(f"cache state {state}: the weights are {ratio} resident")

    def _libraries_resident(self) -> None:
        if self.profile is not None:
            with FileRoot("/") as root:
                replay(load(self.profile), root, io_depth=8)

    # Runs -----------------------------------------------------------------------------------

    def record(self) -> Path:
        """Record the engine's start-up from an all-cold cache; the profile's path."""
        self.set_state("all_cold")
        port, instance = free_port(), uuid.uuid4().hex[:10]
        argv = engine_argv(
            self.weight_set.root,
            port,
            self.workdir / "record-events.jsonl",
            self.workdir / "record.log",
            instance,
            *self.engine_args,
        )
        exclude = frozenset((f.device, f.inode) for f in self.weight_set.weight_files)
        options = RecordOptions(
            key=self.key,
            ready_url=f"http://127.0.0.1:{port}/health",
            timeout_seconds=self.timeout,
            exclude=exclude,
        )
        profile, _ = record_command(argv, options, env=engine_env(self.site_packages))
        self.profile = self.workdir / "startup-profile.json.gz"
        save(profile, self.profile)
        return self.profile

    def run(
        self,
        state: str,
        variant: str,
        *,
        engine_args: tuple[str, ...] = (),
        before_spawn: Callable[[], None] | None = None,
        spawned: Callable[[FakeVllm], None] | None = None,
    ) -> Run:
        """One start from ``state``; ``before_spawn`` runs once the cache is in that state,
        ``spawned`` once the engine's process exists (a diagnosis hooks in there)."""
        self.set_state(state)
        if before_spawn is not None:
            before_spawn()
        port, instance = free_port(), uuid.uuid4().hex[:10]
        workdir = self.workdir / f"{state}-{variant}-{instance}"
        workdir.mkdir(parents=True)
        sidecar = self._sidecar(variant, port, instance, workdir)
        engine: FakeVllm | None = None
        try:
            began = time.perf_counter()
            engine = start_engine(
                self.weight_set.root,
                workdir,
                self.site_packages,
                *self.engine_args,
                *engine_args,
                port=port,
                instance=instance,
            )
            if spawned is not None:
                spawned(engine)
            ready = self._until_ready(engine, began)
            own = engine.time_to_ready()
            started = engine.event("start")["started"]
            phases = {e["event"]: round(e["time"] - started, 3) for e in engine.events()}
            sample = sidecar.wait_samples("load", 1, timeout=120)[0] if sidecar else {}
        finally:
            if engine is not None:
                engine.stop()
            if sidecar is not None:
                sidecar.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
        return Run(state, variant, ready, own, sample, phases)

    def _sidecar(self, variant: str, port: int, instance: str, workdir: Path) -> Sidecar | None:
        if variant == "none":
            return None
        args = [
            "--gate",
            "none",
            "--vllm-url",
            f"http://127.0.0.1:{port}/health",
            "--vllm-process-pattern",
            engine_pattern(instance),
            "--poll-interval",
            "0.05",
            "--engine-image",
            ENGINE_IMAGE,
        ]
        if variant == "profile":
            if self.profile is None:
                raise RuntimeError("the profile variant needs a recorded profile")
            args += ["--startup-profile", str(self.profile), "--no-startup-profile-record"]
        sidecar = start_sidecar(self.weight_set.root, workdir, *args)
        wait_for(lambda: sidecar.get("/startup")[0] == 200, 60, "the gate", POLL_SECONDS)
        return sidecar

    def _until_ready(self, engine: FakeVllm, spawned: float) -> float:
        def ready() -> bool:
            if engine.process.poll() is not None:
                raise RuntimeError(f"the engine exited with status {engine.process.returncode}")
            return http_get(engine.health_url, timeout=2)[0] == 200

        wait_for(ready, self.timeout, "the engine ready", POLL_SECONDS)
        return time.perf_counter() - spawned

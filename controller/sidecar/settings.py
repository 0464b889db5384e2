"""Settings of `pagewarm sidecar` (PAGEWARM_* environment variables; flags win over them),
and the configuration of one run resolved from them (``SidecarConfig``).

The sidecar serves the exporter's metrics (``ExporterSettings``: host, port, samples, ...)
and pre-warms and times loads (``BenchSettings``: pre-warm engine, load timeout, sysfs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from controller.prewarm import PrewarmOptions
from controller.settings import BenchSettings, Size, http_url
from controller.sidecar.gate import GatePolicy
from controller.sidecar.vllm import compile_pattern
from controller.units import MiB
from exporter.settings import ExporterSettings
from exporter.weightset import WeightSet

DEFAULT_VLLM_HEALTH_URL = "http://127.0.0.1:8000/health"
# `vllm serve ...`, `/usr/bin/vllm serve ...`, `python -m vllm.entrypoints.openai.api_server`;
# not `pagewarm sidecar --vllm-url ...` (a flag is no command) nor vLLM's engine-core
# children (their title is "VLLM::EngineCore"; a child of a match is never a start anyway).
DEFAULT_VLLM_PROCESS_PATTERN = r"(^|[\s/])vllm(\s|$)|\bvllm\.entrypoints\b"
# The chart's default startupProbe allows this plus a grace period.
DEFAULT_GATE_TIMEOUT_SECONDS = 900.0


class SidecarSettings(BenchSettings, ExporterSettings):
    gate: str = Field(
        default="full", description="When /startup passes: full, none or ratio:X (0 < X <= 1)."
    )
    gate_timeout_seconds: float = Field(
        default=DEFAULT_GATE_TIMEOUT_SECONDS,
        gt=0,
        description="The gate opens after this long whatever the warm's progress (and says so).",
    )
    vllm_health_url: str = Field(
        default=DEFAULT_VLLM_HEALTH_URL,
        description="Polled until it answers 200; '' or 'none': vLLM is not timed.",
    )
    vllm_log: Path | None = Field(
        default=None, description="vLLM's log file, for its 'Model loading took ...' lines."
    )
    vllm_process_pattern: str = Field(
        default=DEFAULT_VLLM_PROCESS_PATTERN,
        description="Regex on /proc/<pid>/cmdline that finds vLLM's process ('' : do not look).",
    )
    health_poll_interval_seconds: float = Field(
        default=0.1, gt=0, le=5, description="How often /health (and /proc) are polled."
    )
    prewarm_enabled: bool = Field(default=True, description="false: only gate, time and export.")
    keep_warm: bool = Field(default=False, description="Re-warm evicted ranges while running.")
    keep_warm_interval_seconds: float = Field(default=5.0, gt=0)
    keep_warm_rate_limit_bytes: Size = Field(
        default=256 * MiB, ge=1, description="Bytes per second a re-warm reads at most."
    )
    mlock: bool = Field(default=False, description="Lock the weights in memory (IPC_LOCK).")
    startup_profile: Path | None = Field(
        default=None,
        description="A start-up profile to replay ahead of vLLM (a file, or a directory of "
        "profiles named by their key); recorded there on the first start when missing.",
    )
    engine_image: str = Field(
        default="engine",
        min_length=1,
        description="The engine part of the start-up profile's key (the chart sets vLLM's image).",
    )
    startup_profile_record: bool = Field(
        default=True, description="Record the start-up profile when none exists for the key."
    )

    @field_validator("gate")
    @classmethod
    def _valid_gate(cls, value: str) -> str:
        return str(GatePolicy.parse(value))

    @field_validator("vllm_health_url")
    @classmethod
    def _no_url(cls, value: str) -> str:
        return "" if value.strip().lower() in ("", "none") else http_url(value)

    @field_validator("vllm_process_pattern")
    @classmethod
    def _valid_pattern(cls, value: str) -> str:
        compile_pattern(value)
        return value


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """One sidecar run: the settings with the flags applied, and what they resolve to."""

    weight_set: WeightSet
    model: str
    settings: SidecarSettings
    policy: GatePolicy
    options: PrewarmOptions
    reserve_bytes: int
    memory_guard: bool

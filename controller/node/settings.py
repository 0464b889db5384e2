"""Settings of `pagewarm node` (PAGEWARM_* environment variables; flags win over them,
through this model's validation: ``controller.commands.flags``).

The agent serves the exporter's metrics (``ExporterSettings``: host, port, models_dir, ...)
and re-reads with the pre-warm engine (``ControllerSettings``: strategy, threads, chunk).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from controller.memguard import DEFAULT_RESERVE_BYTES
from controller.settings import ControllerSettings
from controller.units import parse_duration, parse_size
from exporter.settings import ExporterSettings

DEFAULT_INTERVAL_SECONDS = 30.0


def _size(value: Any) -> Any:
    """'200MiB', '200MiB/s' or a number of bytes; '' or 'unlimited': unset."""
    if not isinstance(value, str):
        return value
    text = value.strip().removesuffix("/s")
    if text.lower() in ("", "unlimited", "none"):
        return None
    return parse_size(text)


class NodeSettings(ControllerSettings, ExporterSettings):
    node_config: Path | None = Field(
        default=None, description="The models to keep warm (YAML or JSON), re-read on change."
    )
    nfd_features_dir: Path | None = Field(
        default=None,
        description="Node Feature Discovery's features.d: the agent writes its file 'pagewarm' "
        "there (one line per warm model). Unset: no feature file.",
    )
    node_name: str = Field(
        default_factory=lambda: os.uname().nodename,
        min_length=1,
        description="This node's name (the chart sets it from spec.nodeName).",
    )
    node_interval: float = Field(
        default=DEFAULT_INTERVAL_SECONDS, gt=0, description="Seconds between keep-warm passes."
    )
    node_rate_limit: int | None = Field(
        default=None, ge=1, description="Bytes per second the node's re-warm reads at most."
    )
    node_reserve: int = Field(
        default=DEFAULT_RESERVE_BYTES, ge=0, description="Memory a re-warm always leaves free."
    )
    node_warm_threshold: float = Field(
        default=0.95, gt=0, le=1, description="A model is warm at this resident ratio."
    )
    node_warm_hysteresis: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="A warm model turns cold only below threshold - hysteresis (no flapping).",
    )
    node_pressure_threshold: float = Field(
        default=10.0,
        ge=0,
        le=100,
        description="Back off when PSI memory 'some' (avg10, or the stalled share since the "
        "last look, percent) exceeds this.",
    )
    node_pressure_hold_off: float = Field(
        default=60.0, ge=0, description="Seconds without re-reading after memory pressure."
    )
    node_thrash_evictions: int = Field(
        default=3, ge=1, description="More evictions than this in the window: thrashing."
    )
    node_thrash_window: float = Field(
        default=600.0, gt=0, description="Seconds over which evictions are counted."
    )

    @field_validator("node_interval", "node_pressure_hold_off", "node_thrash_window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("node_rate_limit", "node_reserve", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        return _size(value)

    @model_validator(mode="after")
    def _one_source(self) -> NodeSettings:
        if self.node_config is not None and self.models_dir is not None:
            raise ValueError(
                "give the models either as a config file (node_config) or as a models "
                "directory (models_dir), not both"
            )
        return self

"""Settings shared by every pagewarm command: environment variables with the PAGEWARM_
prefix (plain MODEL_PATH too, as vLLM users set it), overridden by command-line flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from exporter.weightset import DEFAULT_METADATA_PATTERNS, DEFAULT_WEIGHT_PATTERNS


def default_samples_path() -> Path:
    """$XDG_STATE_HOME/pagewarm/samples.jsonl (~/.local/state/... when unset)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pagewarm" / "samples.jsonl"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAGEWARM_", extra="ignore", frozen=True)

    model_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("PAGEWARM_MODEL_PATH", "MODEL_PATH"),
        description="The model directory (or one weight file).",
    )
    weight_patterns: tuple[str, ...] = Field(
        default=DEFAULT_WEIGHT_PATTERNS, description="Glob patterns of weight files."
    )
    metadata_patterns: tuple[str, ...] = Field(
        default=DEFAULT_METADATA_PATTERNS, description="Glob patterns of index/config files."
    )
    residency_method: Literal["auto", "cachestat", "mincore"] = Field(
        default="auto", description="How residency is measured; auto prefers cachestat(2)."
    )
    samples: Path = Field(
        default_factory=default_samples_path,
        description="The JSONL store of load and pre-warm samples.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

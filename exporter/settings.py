"""Settings shared by every pagewarm command: environment variables with the PAGEWARM_
prefix (plain MODEL_PATH too, as vLLM users set it), overridden by command-line flags."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    weight_patterns: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_WEIGHT_PATTERNS,
        description="Glob patterns of weight files (JSON list or a,b,c).",
    )
    metadata_patterns: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_METADATA_PATTERNS,
        description="Glob patterns of index/config files (JSON list or a,b,c).",
    )
    cross_filesystems: bool = Field(
        default=False,
        description="Follow directories (links, mounts) off the model root's filesystem; "
        "kernel pseudo-filesystems (/proc, /sys) are never walked.",
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

    @field_validator("weight_patterns", "metadata_patterns", mode="before")
    @classmethod
    def _split_patterns(cls, value: Any) -> Any:
        # PAGEWARM_WEIGHT_PATTERNS='*.safetensors' as people write it, or a JSON list.
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text.startswith("["):
            return [part.strip() for part in text.split(",") if part.strip()]
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"neither a JSON list nor patterns a,b,c: {exc}") from None

    @field_validator("model_path", mode="before")
    @classmethod
    def _empty_model_path_is_unset(cls, value: Any) -> Any:
        # `MODEL_PATH=` (a Kubernetes env var with an empty value) must not become Path("."):
        # the current directory, the whole root filesystem in a container.
        return None if isinstance(value, str) and not value.strip() else value


def _path_list(value: Any) -> Any:
    """PAGEWARM_MODEL_PATHS as people write it: a JSON list, or paths separated by
    commas or colons (like PATH)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [part.strip() for part in text.replace(os.pathsep, ",").split(",") if part.strip()]


class ExporterSettings(CommonSettings):
    """`pagewarm exporter` (and the metrics side of the sidecar)."""

    model_paths: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(), description="Models to watch, besides MODEL_PATH (JSON list or a,b,c)."
    )
    models_dir: Path | None = Field(
        default=None,
        description="Every subdirectory (or Hugging Face cache entry models--org--name) of "
        "this directory is a model; looked at again on every collection.",
    )
    model_name: str | None = Field(
        default=None, description="The model label when one model is watched."
    )
    host: str = Field(default="0.0.0.0", description="Address to listen on.")  # noqa: S104 - a pod's metrics port must be reachable
    port: int = Field(default=9741, ge=0, le=65535, description="0: any free port.")
    per_file_series: bool | None = Field(
        default=None,
        description="Per-file series (pagewarm_file_*{model,file}). Unset (or 'auto'): on "
        "when models are named one by one (MODEL_PATH, PAGEWARM_MODEL_PATHS), off when a "
        "models directory is watched (a node's cache: per-model series only).",
    )
    file_series_limit: int = Field(
        default=256, ge=0, description="Per-file series per model at most (0: none)."
    )
    collection_max_age_seconds: float = Field(
        default=1.0, ge=0, description="Scrapes within this age share one collection."
    )
    scrape_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A scrape waits this long for a collection at most."
    )
    idle_timeout_seconds: float = Field(
        default=15.0, gt=0, description="Connections idle (or sending a request) this long close."
    )

    @field_validator("model_paths", mode="before")
    @classmethod
    def _split_model_paths(cls, value: Any) -> Any:
        return _path_list(value)

    @field_validator("per_file_series", mode="before")
    @classmethod
    def _auto_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        return value

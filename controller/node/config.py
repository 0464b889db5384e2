"""What the node agent keeps warm: a YAML or JSON file (a ConfigMap), re-read when it
changes, or every model of a directory (``--models-dir``).

    models:
      - name: llama-3-8b
        path: /models/llama-3-8b
        priority: 100          # higher is warmed first and kept over lower; default 0

The file is looked at on every pass (one stat): a new device, inode, mtime or size means a
new version (a ConfigMap update swaps a symlink: the inode changes). A new version that
does not parse or validate leaves the last good one in force; the error is logged once and
reported (``/status``, ``pagewarm_node_config_valid``). A model whose path is missing is
not a config error: it is reported as missing and warmed once it appears.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.node.labels import warm_label_name
from exporter.errors import UserError
from exporter.models import ModelSources, ModelSpec

log = structlog.get_logger("pagewarm")


class ConfigError(UserError):
    """The configuration file cannot be read or is not valid."""


class NodeModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    path: Path
    priority: int = 0

    @field_validator("name")
    @classmethod
    def _labelable(cls, value: str) -> str:
        warm_label_name(value)  # ValueError: no label can be made of it
        return value


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[NodeModel, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> NodeConfig:
        names = [m.name for m in self.models]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"model names must be unique, repeated: {', '.join(repeated)}")
        labels = [warm_label_name(n) for n in names]
        clashing = sorted(
            {n for n, lab in zip(names, labels, strict=True) if labels.count(lab) > 1}
        )
        if clashing:
            raise ValueError(f"these model names give the same node label: {', '.join(clashing)}")
        return self

    def priority_of(self, name: str) -> int:
        return next((m.priority for m in self.models if m.name == name), 0)

    def sources(self) -> ModelSources:
        return ModelSources(tuple(ModelSpec(m.path, m.name) for m in self.models))


def parse_config(text: str, origin: str) -> NodeConfig:
    """A config from YAML or JSON text (JSON is YAML); ConfigError says what is wrong."""
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not YAML or JSON: {exc}") from None
    if document is None:
        document = {}
    try:
        return NodeConfig.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{origin}: invalid: {problems}") from None


Stamp = tuple[int, int, int, int]


def _stamp(path: Path) -> Stamp:
    st = os.stat(path)  # noqa: PTH116 - follows the ConfigMap's symlinks, as intended
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True, slots=True)
class ConfigStatus:
    source: str
    valid: bool  # the newest version parsed; False: the last good one is still in force
    error: str | None
    reloads: int  # versions taken after the first


class ConfigFile:
    """The config file, re-read when its stamp changes; the last good version is kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = _stamp_or_raise(path)
        self.config = parse_config(path.read_text(), str(path))
        self.error: str | None = None
        self.reloads = 0

    def current(self) -> NodeConfig:
        """The config in force, after a look at the file (one stat when unchanged)."""
        try:
            stamp = _stamp(self.path)
        except OSError as exc:
            self._failed(f"{self.path}: cannot read: {exc.strerror or exc}", None)
            return self.config
        if stamp == self._stamp:
            return self.config
        try:
            config = parse_config(self.path.read_text(), str(self.path))
        except (ConfigError, OSError) as exc:
            self._failed(str(exc), stamp)
            return self.config
        self._stamp, self.config, self.error = stamp, config, None
        self.reloads += 1
        log.info("config reloaded", path=str(self.path), models=len(config.models))
        return config

    def sources(self) -> ModelSources:
        return self.config.sources()

    def _failed(self, error: str, stamp: Stamp | None) -> None:
        if stamp is not None:
            self._stamp = stamp  # this version is judged: not parsed again until it changes
        if error != self.error:
            log.error("config not taken, the last good one stays", error=error)
        self.error = error

    def status(self) -> ConfigStatus:
        return ConfigStatus(str(self.path), self.error is None, self.error, self.reloads)


def _stamp_or_raise(path: Path) -> Stamp:
    try:
        return _stamp(path)
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read: {exc.strerror or exc}") from None


class ModelsDirectory:
    """``--models-dir``: every model found there, all at one priority (0)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = NodeConfig()

    def current(self) -> NodeConfig:
        return self.config

    def sources(self) -> ModelSources:
        return ModelSources(models_dir=self.path)

    def status(self) -> ConfigStatus:
        return ConfigStatus(str(self.path), True, None, 0)

"""Which models the exporter watches, looked at again on every collection.

A model comes from one of two sources:

- an explicit path (``--model-path``, ``MODEL_PATH``, ``PAGEWARM_MODEL_PATHS``), named by
  ``--model-name`` or after its path (``models--org--name`` -> ``org/name``);
- a models directory (``--models-dir``): each subdirectory is a model, and so is each
  Hugging Face cache entry ``models--org--name`` when the directory is a hub cache.

``ModelScanner.scan()`` lists the sources and looks at each model's weight set again, so a
model whose path vanished, or whose snapshot was replaced by a new revision, is seen as it
is now: a missing explicit path stays in the scan with its error (the exporter keeps
serving and says so), a vanished subdirectory of the models directory simply leaves it.
A weight set is only rebuilt when its tree changed (``exporter.weightset_cache``).
Names are unique within a scan: a second model that would share a name is named by its
path instead, since two series with the same labels would break the exposition.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import structlog

from exporter.settings import ExporterSettings
from exporter.weightset import (
    DEFAULT_METADATA_PATTERNS,
    DEFAULT_WEIGHT_PATTERNS,
    ModelPathError,
    WeightSet,
    model_name_for_path,
)
from exporter.weightset_cache import WeightSetCache

log = structlog.get_logger("pagewarm")

# Hugging Face hub cache entries that are not models.
_NOT_MODELS = ("datasets--", "spaces--")


def label_value(text: str) -> str:
    """A string every exposition can encode: file names are bytes on Linux, and Python
    keeps undecodable ones as lone surrogates, which UTF-8 refuses; they become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text
    try:  # a file name: back to its bytes, then each byte that is not UTF-8 becomes U+FFFD
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from elsewhere (JSON "\\ud800")
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model to watch: a directory (or a single weight file) and, optionally, its name."""

    path: Path
    name: str | None = None

    @property
    def label(self) -> str:
        return label_value(self.name or model_name_for_path(self.path))


@dataclass(frozen=True, slots=True)
class ModelSources:
    """The configured models: explicit ones, plus every model under ``models_dir``."""

    models: tuple[ModelSpec, ...] = ()
    models_dir: Path | None = None

    @classmethod
    def of(cls, models: Models) -> ModelSources:
        """Accepts sources as they are, or a plain list of specs and paths."""
        if isinstance(models, ModelSources):
            return models
        return cls(tuple(m if isinstance(m, ModelSpec) else ModelSpec(Path(m)) for m in models))

    @classmethod
    def from_settings(cls, settings: ExporterSettings) -> ModelSources:
        """MODEL_PATH and PAGEWARM_MODEL_PATHS (the name applies when there is only one
        path), and PAGEWARM_MODELS_DIR."""
        paths = list(dict.fromkeys([*settings.model_paths, *_optional(settings.model_path)]))
        name = settings.model_name if len(paths) == 1 else None
        return cls(tuple(ModelSpec(p, name) for p in paths), settings.models_dir)


# What callers may pass as the models to watch: sources, or a list of specs and paths.
Models: TypeAlias = ModelSources | Iterable[ModelSpec | str | os.PathLike[str]]


def _optional(path: Path | None) -> list[Path]:
    return [] if path is None else [path]


@dataclass(frozen=True, slots=True)
class WatchedModel:
    """A model as one scan found it: its weight set, or why there is none."""

    name: str
    path: Path
    weight_set: WeightSet | None
    error: str | None = None
    # Named in the configuration (not found in the models directory): its series that
    # are zero until something happens exist from the start, so alerts see them change.
    configured: bool = True
    # {"model": name}, one dict for every per-model series of a collection: collectors
    # add series with it as it is (they and the exposition only read it).
    labels: dict[str, str] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", {"model": self.name})


@dataclass(frozen=True, slots=True)
class ModelScan:
    models: tuple[WatchedModel, ...]
    models_dir_error: str | None = None  # the models directory itself could not be listed

    @property
    def available(self) -> tuple[tuple[WatchedModel, WeightSet], ...]:
        """The models that could be scanned, with their weight sets."""
        return tuple((m, m.weight_set) for m in self.models if m.weight_set is not None)


def _is_model_entry(entry: os.DirEntry[str]) -> bool:
    if entry.name.startswith(".") or entry.name.startswith(_NOT_MODELS):
        return False
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def model_entry_names(directory: Path) -> list[str]:
    """The models of a models directory, by entry name, sorted: each subdirectory; in a
    Hugging Face hub cache, each ``models--org--name`` entry. Hidden entries, files,
    datasets and spaces are not models."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if _is_model_entry(e))


class ModelScanner:
    """Lists the sources and discovers every model's weight set, on each ``scan()``."""

    def __init__(
        self,
        sources: ModelSources,
        weight_patterns: Sequence[str] = DEFAULT_WEIGHT_PATTERNS,
        metadata_patterns: Sequence[str] = DEFAULT_METADATA_PATTERNS,
        weight_sets: WeightSetCache | None = None,
        *,
        cross_filesystems: bool = False,
    ) -> None:
        self.sources = sources
        self.weight_patterns = tuple(weight_patterns)
        self.metadata_patterns = tuple(metadata_patterns)
        self.weight_sets = weight_sets or WeightSetCache(cross_filesystems=cross_filesystems)
        # Problems are logged when they appear or change, not on every scrape.
        self._reported: dict[str, str | None] = {}
        # A node's models directory lists the same 1,000 entries on every collection:
        # their specs, absolute paths and names are built once (pathlib is not cheap).
        self._entries: dict[str, ModelSpec] = {}
        self._resolved: dict[ModelSpec, tuple[Path, str]] = {}

    def specs(self) -> tuple[list[ModelSpec], str | None]:
        """The configured models, then the models directory's (``None`` error when it
        could be listed)."""
        specs = list(self.sources.models)
        directory = self.sources.models_dir
        error = None
        if directory is not None:
            try:
                specs.extend(self._directory_specs(directory))
            except OSError as exc:
                error = f"cannot list models directory {directory}: {exc.strerror or exc}"
            self._report(f"models_dir:{directory}", error)
        return specs, error

    def _directory_specs(self, directory: Path) -> list[ModelSpec]:
        """A spec per entry, named after its path (``models--org--name``: ``org/name``)."""
        names = model_entry_names(directory)
        known = self._entries
        specs = [known.get(n) or ModelSpec(directory / n) for n in names]
        self._entries = dict(zip(names, specs, strict=True))
        return specs

    def _path_and_name(self, spec: ModelSpec) -> tuple[Path, str]:
        resolved = self._resolved.get(spec)
        if resolved is None:
            resolved = self._resolved[spec] = (spec.path.absolute(), spec.label)
        return resolved

    def scan(self) -> ModelScan:
        specs, dir_error = self.specs()
        configured = set(self.sources.models)
        models: list[WatchedModel] = []
        names: set[str] = set()
        paths: set[Path] = set()
        for spec in specs:
            path, name = self._path_and_name(spec)
            if path in paths:
                continue
            paths.add(path)
            if name in names:
                name = label_value(str(path))
            names.add(name)
            models.append(self._watch(name, path, configured=spec in configured))
        self.weight_sets.keep_only(paths)
        if len(self._resolved) > len(specs):  # entries that left the models directory
            kept = set(specs)
            self._resolved = {s: r for s, r in self._resolved.items() if s in kept}
        return ModelScan(tuple(models), dir_error)

    def _watch(self, name: str, path: Path, *, configured: bool) -> WatchedModel:
        try:
            weight_set = self.weight_sets.get(path, self.weight_patterns, self.metadata_patterns)
        except ModelPathError as exc:
            error: str | None = str(exc)
            weight_set = None
        except OSError as exc:  # e.g. a Hugging Face snapshots/ directory we may not list
            error = f"model path {path} cannot be scanned: {exc.strerror or exc}"
            weight_set = None
        else:
            error = None
        self._report(str(path), error, model=name)
        return WatchedModel(name, path, weight_set, error, configured)

    def _report(self, key: str, error: str | None, **fields: str) -> None:
        if self._reported.get(key) == error:
            return
        if error is not None:
            log.warning("model source unavailable", error=error, **fields)
        elif key in self._reported:
            log.info("model source available again", source=key, **fields)
        self._reported[key] = error

"""Rendering the Helm chart with the real helm binary, and reading what it rendered."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO, require_binary

CHART = REPO / "helm" / "pagewarm"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
# The values files of releases that run pagewarm (mode monitoring runs nothing).
WORKLOAD_VALUES = [p for p in CI_VALUES if p.name != "monitoring-values.yaml"]
RELEASE = "pw"
NAMESPACE = "models"
RULES_FILE = REPO / "alerts" / "pagewarm.rules.yml"
DASHBOARDS_DIR = REPO / "grafana"
# The Kubernetes version the manifests are validated against (kubernetes-validate ships
# its schemas); the chart needs >= 1.29 (native sidecars).
KUBERNETES_VERSION = "1.35.0"

Manifest = dict[str, Any]


class RenderError(Exception):
    """helm refused to render; the message is helm's stderr."""


@dataclass(frozen=True)
class Rendered:
    manifests: list[Manifest]

    def kinds(self) -> list[str]:
        return sorted(f"{m['kind']}/{m['metadata']['name']}" for m in self.manifests)

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str) -> Manifest:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {self.kinds()}"
        return found[0]


def helm() -> str:
    return require_binary("helm")


def values_file(name: str) -> Path:
    path = CHART / "ci" / f"{name}-values.yaml"
    assert path.is_file(), path
    return path


def _set_args(overrides: Mapping[str, Any]) -> list[str]:
    """--set-json for each override: types survive (ints stay ints, lists stay lists)."""
    args: list[str] = []
    for key, value in overrides.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [helm(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return result


def render(
    values: Sequence[Path] = (),
    overrides: Mapping[str, Any] | None = None,
    *,
    show_only: str | None = None,
) -> Rendered:
    """`helm template` of the chart directory; RenderError with helm's message on failure."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values:
        args += ["--values", str(path)]
    args += _set_args(overrides or {})
    if show_only:
        args += ["--show-only", show_only]
    stdout = run_helm(*args).stdout
    return Rendered([doc for doc in yaml.safe_load_all(stdout) if doc])


def containers(pod_spec: Manifest) -> Iterator[Manifest]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec.get("containers", [])


def container(pod_spec: Manifest, name: str) -> Manifest:
    for found in containers(pod_spec):
        if found["name"] == name:
            return found
    raise AssertionError(f"no container {name!r} in {[c['name'] for c in containers(pod_spec)]}")


def pod_spec(manifest: Manifest) -> Manifest:
    spec: Manifest = manifest["spec"]["template"]["spec"]
    return spec


def snippet_patch(rendered: Rendered) -> Manifest:
    """The strategic-merge patch the snippet ConfigMap carries, parsed."""
    config_map = next(
        m for m in rendered.of_kind("ConfigMap") if m["metadata"]["name"].endswith("-snippet")
    )
    patch: Manifest = yaml.safe_load(config_map["data"]["patch.yaml"])
    return patch


def env_values(container: Manifest) -> dict[str, str]:
    """A container's plain env values (those from the downward API are left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def quantity_bytes(text: str | int) -> int:
    """A Kubernetes memory quantity in bytes (the subset the chart writes and accepts)."""
    if isinstance(text, int):
        return text
    units = {
        "Ki": 1 << 10,
        "Mi": 1 << 20,
        "Gi": 1 << 30,
        "Ti": 1 << 40,
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
    }
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def values_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded

"""sidecar.startupProfile (issue 15): the sidecar gets the profile's settings, the pod a
shared process namespace and the sidecar CAP_SYS_PTRACE, and the profile volume is mounted,
written only while recording; all of it only when enabled, never by default."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy import chart

SIDECAR = [chart.values_file("sidecar")]
SNIPPET = [chart.values_file("sidecar-snippet")]
ROOT = {"pagewarm.runAsUser": 0, "pagewarm.runAsNonRoot": False}
ON = {"sidecar.startupProfile.enabled": True, "pod.shareProcessNamespace": False, **ROOT}
PVC = {**ON, "sidecar.startupProfile.persistentVolumeClaim": "vllm-profiles"}
PROFILE_ENV = {
    "PAGEWARM_STARTUP_PROFILE",
    "PAGEWARM_ENGINE_IMAGE",
    "PAGEWARM_STARTUP_PROFILE_RECORD",
    "PAGEWARM_STARTUP_PROFILE_IO_DEPTH",
}


def pod(overrides: dict[str, Any], values: list[Any] = SIDECAR) -> dict[str, Any]:
    return chart.pod_spec(chart.render(values, overrides).one("Deployment"))


def profile_volume(spec: dict[str, Any]) -> dict[str, Any] | None:
    found = [v for v in spec["volumes"] if v["name"] == "pagewarm-startup-profiles"]
    return found[0] if found else None


def profile_mount(sidecar: dict[str, Any]) -> dict[str, Any] | None:
    found = [m for m in sidecar["volumeMounts"] if m["name"] == "pagewarm-startup-profiles"]
    return found[0] if found else None


@pytest.mark.parametrize("values", [SIDECAR, []], ids=["ci-sidecar", "chart-defaults"])
def test_off_by_default_no_shared_namespace_no_ptrace(values: list[Any]) -> None:
    overrides: dict[str, Any] = {"pod.shareProcessNamespace": False}
    if not values:  # the chart's own defaults, with only what sidecar mode requires
        overrides |= {
            "model.path": "/models/m",
            "model.sizeBytes": "1Gi",
            "model.volume.claimName": "models",
        }
    spec = pod(overrides, values)
    assert "shareProcessNamespace" not in spec
    sidecar = chart.container(spec, "pagewarm")
    assert "SYS_PTRACE" not in sidecar["securityContext"]["capabilities"].get("add", [])
    assert not PROFILE_ENV & {e["name"] for e in sidecar["env"]}
    assert profile_volume(spec) is None
    assert profile_mount(sidecar) is None


def test_enabled_the_sidecar_replays_and_records_on_a_claim() -> None:
    spec = pod(PVC)
    assert spec["shareProcessNamespace"] is True  # though pod.shareProcessNamespace is off
    sidecar = chart.container(spec, "pagewarm")
    capabilities = sidecar["securityContext"]["capabilities"]
    assert capabilities == {"drop": ["ALL"], "add": ["FOWNER", "SYS_PTRACE"]}
    env = chart.env_values(sidecar)
    vllm = chart.container(spec, "vllm")
    assert {name: env[name] for name in PROFILE_ENV} == {
        "PAGEWARM_STARTUP_PROFILE": "/var/lib/pagewarm/startup-profiles",
        "PAGEWARM_ENGINE_IMAGE": vllm["image"],
        "PAGEWARM_STARTUP_PROFILE_RECORD": "true",
        "PAGEWARM_STARTUP_PROFILE_IO_DEPTH": "2",
    }
    assert profile_volume(spec) == {
        "name": "pagewarm-startup-profiles",
        "persistentVolumeClaim": {"claimName": "vllm-profiles"},
    }
    assert profile_mount(sidecar) == {
        "name": "pagewarm-startup-profiles",
        "mountPath": "/var/lib/pagewarm/startup-profiles",
        "readOnly": False,
    }
    # vLLM gets nothing of it: it is only read, through /proc/<pid>/root.
    assert "SYS_PTRACE" not in str(vllm)


def test_replay_only_mounts_the_profiles_read_only() -> None:
    spec = pod({**PVC, "sidecar.startupProfile.record": False, "sidecar.startupProfile.ioDepth": 4})
    sidecar = chart.container(spec, "pagewarm")
    env = chart.env_values(sidecar)
    assert env["PAGEWARM_STARTUP_PROFILE_RECORD"] == "false"
    assert env["PAGEWARM_STARTUP_PROFILE_IO_DEPTH"] == "4"
    assert profile_volume(spec) == {
        "name": "pagewarm-startup-profiles",
        "persistentVolumeClaim": {"claimName": "vllm-profiles", "readOnly": True},
    }
    mount = profile_mount(sidecar)
    assert mount is not None and mount["readOnly"] is True
    overrides = {
        **ON,
        "sidecar.startupProfile.record": False,
        "sidecar.startupProfile.configMap": "vllm-profiles",
        "sidecar.startupProfile.path": "/etc/pagewarm/profiles",
    }
    spec = pod(overrides)
    assert profile_volume(spec) == {
        "name": "pagewarm-startup-profiles",
        "configMap": {"name": "vllm-profiles"},
    }
    mount = profile_mount(chart.container(spec, "pagewarm"))
    assert mount == {
        "name": "pagewarm-startup-profiles",
        "mountPath": "/etc/pagewarm/profiles",
        "readOnly": True,
    }


def test_without_a_volume_the_profile_lives_in_the_state_volume() -> None:
    spec = pod(ON)
    assert profile_volume(spec) is None
    sidecar = chart.container(spec, "pagewarm")
    state = next(m for m in sidecar["volumeMounts"] if m["name"] == "pagewarm-state")
    profile = chart.env_values(sidecar)["PAGEWARM_STARTUP_PROFILE"]
    assert profile.startswith(state["mountPath"] + "/")


def test_a_non_root_sidecar_works_with_vllm_as_its_user() -> None:
    overrides = {
        **PVC,
        "pagewarm.runAsUser": 65532,
        "pagewarm.runAsNonRoot": True,
        "vllm.securityContext": {"runAsUser": 65532},
    }
    spec = pod(overrides)
    security = chart.container(spec, "pagewarm")["securityContext"]
    assert security["runAsUser"] == 65532
    assert security["runAsNonRoot"] is True


def test_the_snippet_shares_the_namespace_and_sets_the_profile() -> None:
    rendered = chart.render(SNIPPET, {**PVC})
    spec = chart.pod_spec(chart.snippet_patch(rendered))
    assert spec["shareProcessNamespace"] is True
    sidecar = chart.container(spec, "pagewarm")
    assert {e["name"] for e in sidecar["env"]} >= PROFILE_ENV
    assert profile_volume(spec) is not None


@pytest.mark.parametrize(
    "overrides", [PVC, {**ON, "sidecar.startupProfile.record": False}], ids=["claim", "state"]
)
def test_the_rendered_objects_are_valid(overrides: dict[str, Any]) -> None:
    for manifest in chart.render(SIDECAR, overrides).manifests:
        kubernetes_validate.validate(manifest, chart.KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            {**PVC, "mode": "init"},
            "sidecar.startupProfile.enabled needs mode sidecar (this release is mode init)",
        ),
        (
            {**PVC, "sidecar.startupProfile.configMap": "p"},
            "give persistentVolumeClaim or configMap, not both",
        ),
        (
            {**ON, "sidecar.startupProfile.configMap": "p"},
            "set sidecar.startupProfile.record=false",
        ),
        (
            {**ON, "sidecar.startupProfile.path": "/profiles"},
            "sidecar.startupProfile.path /profiles is on no volume",
        ),
        (
            {**PVC, "pagewarm.runAsUser": 65532, "pagewarm.runAsNonRoot": True},
            "pagewarm runs as UID 65532 and vLLM as its image's user (root for vllm/vllm-openai)",
        ),
        (
            {
                **PVC,
                "pagewarm.runAsUser": 65532,
                "pagewarm.runAsNonRoot": True,
                "vllm.securityContext": {"runAsUser": 1000},
            },
            "pagewarm runs as UID 65532 and vLLM as 1000. Set vllm.securityContext.runAsUser=65532",
        ),
    ],
)
def test_values_that_cannot_work_are_refused(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(chart.RenderError) as raised:
        chart.render(SIDECAR, overrides)
    assert says in str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"sidecar.startupProfile.ioDepth": 0}, "/sidecar/startupProfile/ioDepth"),
        ({"sidecar.startupProfile.path": "profiles"}, "/sidecar/startupProfile/path"),
        ({"sidecar.startupProfile.replay": True}, "replay"),
    ],
)
def test_schema_refuses(overrides: dict[str, Any], where: str) -> None:
    with pytest.raises(chart.RenderError) as raised:
        chart.render(SIDECAR, overrides)
    assert "schema" in str(raised.value)
    assert where in str(raised.value)

"""Values that do not fit are refused with a message that says what to change: by
values.schema.json (types, unknown keys, formats) and by the templates' checks (memory,
modes, model). The memory limit of the warming container holds the model."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy import chart

SIDECAR = [chart.values_file("sidecar")]
INIT = [chart.values_file("init")]
MiB = 1 << 20


def refusal(values: list[Any], overrides: dict[str, Any]) -> str:
    with pytest.raises(chart.RenderError) as raised:
        chart.render(values, overrides)
    return str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"modes": "sidecar"}, "modes"),  # unknown top-level key (a typo)
        ({"pagewarm.fowners": True}, "fowners"),  # unknown nested key
        ({"sidecar.keepwarm": True}, "keepwarm"),
        ({"mode": "daemon"}, "/mode"),
        ({"model.sizeBytes": "16GB"}, "/model/sizeBytes"),
        ({"model.sizeBytes": -1}, "/model/sizeBytes"),
        ({"model.path": "models/llama"}, "/model/path"),
        ({"model.volume.type": "nfs"}, "/model/volume/type"),
        ({"sidecar.gate": "half"}, "/sidecar/gate"),
        ({"sidecar.gate": "ratio:1.5"}, "/sidecar/gate"),
        ({"sidecar.gateTimeoutSeconds": 0}, "/sidecar/gateTimeoutSeconds"),
        ({"image.digest": "sha256:abc"}, "/image/digest"),
        ({"pagewarm.runAsUser": -1}, "/pagewarm/runAsUser"),
        ({"pagewarm.runAsUser": "nobody"}, "/pagewarm/runAsUser"),
        ({"pagewarm.resources": {"limits": {"memory": "16GB"}}}, "/pagewarm/resources"),
        ({"pagewarm.resources": {"limit": {"memory": "16Gi"}}}, "limit"),
        ({"prewarm.threads": 0}, "/prewarm/threads"),
        ({"prewarm.strategy": "mmap"}, "/prewarm/strategy"),
        ({"monitoring.serviceMonitor.interval": "30 seconds"}, "interval"),
        ({"node.mountPropagation": "Bidirectional"}, "/node/mountPropagation"),
        ({"pagewarm.stateVolume": {"name": "x", "emptyDir": {}}}, "/pagewarm/stateVolume"),
        ({"mode": "monitor"}, "/mode"),
        ({"model.revision": "main"}, "/model/revision"),
        ({"monitoring.prometheusRule.disabled": {"PagewarmDown": True}}, "PagewarmDown"),
        (
            {"monitoring.prometheusRule.customRules": {"PagewarmExporterDown": {"for": "5 min"}}},
            "/monitoring/prometheusRule/customRules",
        ),
        ({"monitoring.serviceMonitor.sampleLimit": -1}, "sampleLimit"),
        ({"networkPolicy.metricsFrom": []}, "/networkPolicy/metricsFrom"),
        ({"vllm.podDisruptionBudget.maxUnavailable": "half"}, "maxUnavailable"),
        ({"global": {"imageRegistry": 5}}, "/global/imageRegistry"),
    ],
)
def test_schema_refuses(overrides: dict[str, Any], where: str) -> None:
    message = refusal(SIDECAR, overrides)
    assert "schema" in message
    assert where in message


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"model.path": ""}, "model.path is required in sidecar mode"),
        ({"model.path": "/data/llama"}, "is not under model.volume.mountPath"),
        ({"model.sizeBytes": 0}, "model.sizeBytes is required"),
        ({"model.volume.claimName": ""}, "claimName is required"),
        (
            {"model.volume.type": "hostPath", "model.volume.hostPath": ""},
            "model.volume.hostPath is required",
        ),
        ({"model.volume.type": "existing"}, "it needs vllm.enabled=false"),
        ({"pagewarm.runAsUser": 0}, "runAsNonRoot is true"),
        (
            {"monitoring.serviceMonitor.enabled": True, "monitoring.service.enabled": False},
            "needs monitoring.service.enabled",
        ),
        ({"pagewarm.resources": {"limits": {"memory": "12Qi"}}}, "schema"),
        # Defect 8: what crash-looped or failed with "'not' failed" now says what is wrong.
        (
            {"pagewarm.port": 8000},
            "vllm.port and pagewarm.port are both 8000: vLLM and pagewarm share the pod's "
            "network, and the second to bind the port would exit at once",
        ),
        ({"vllm.image.tag": "latest"}, 'vllm.image.tag is "latest", which names a different'),
        ({"image.tag": "latest"}, "Pin a version (e.g. image.tag=v0.11.0), or pin image.digest"),
        (
            {"vllm.podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
            "needs exactly one of minAvailable and maxUnavailable",
        ),
    ],
)
def test_templates_refuse_values_that_do_not_fit(overrides: dict[str, Any], says: str) -> None:
    assert says in refusal(SIDECAR, overrides)


def test_default_values_say_what_is_missing() -> None:
    """`helm install pagewarm` without a model stops at the first thing to set."""
    message = refusal([], {})
    assert "model.path is required" in message


def warmer_limit(values: list[Any], overrides: dict[str, Any] | None = None) -> int:
    pod = chart.pod_spec(chart.render(values, overrides).one("Deployment"))
    memory: str = chart.container(pod, "pagewarm")["resources"]["limits"]["memory"]
    return chart.quantity_bytes(memory)


def required_bytes(values: dict[str, Any]) -> int:
    defaults = chart.values_yaml()
    return int(
        values["model"]["sizeBytes"]
        + defaults["prewarm"]["reserveBytes"]
        + defaults["memory"]["headroomBytes"]
    )


def test_sidecar_memory_limit_is_computed_from_the_model_size() -> None:
    import yaml  # noqa: PLC0415

    values = yaml.safe_load(SIDECAR[0].read_text())
    required = required_bytes(values)
    limit = warmer_limit(SIDECAR)
    assert required <= limit < required + MiB
    # A bigger model, a bigger limit.
    bigger = warmer_limit(SIDECAR, {"model.sizeBytes": 140 << 30})
    assert bigger == (140 << 30) + (512 << 20)  # the reserve and the headroom, 256 MiB each


def test_init_memory_limit_also_holds_vllm() -> None:
    """In init mode the init container's page cache stays charged to the pod after it exits:
    the pod's limit (the largest of the init container's and the sum of the others') must
    hold the model and vLLM's own limit."""
    import yaml  # noqa: PLC0415

    values = yaml.safe_load(INIT[0].read_text())
    vllm_limit = chart.quantity_bytes(values["vllm"]["resources"]["limits"]["memory"])
    required = required_bytes(values) + vllm_limit
    limit = warmer_limit(INIT)
    assert required <= limit < required + MiB
    # Without a memory limit on vLLM the pod has no pod-level limit: the model alone.
    unlimited = warmer_limit(INIT, {"vllm.resources": {"limits": {"nvidia.com/gpu": 1}}})
    assert required_bytes(values) <= unlimited < required_bytes(values) + MiB


@pytest.mark.parametrize("limit", ["15Gi", "16G", "15000Mi", "16500000000", 16000000000])
def test_memory_limit_too_small_is_refused_with_the_limit_that_fits(limit: str | int) -> None:
    message = refusal(SIDECAR, {"pagewarm.resources": {"limits": {"memory": limit}}})
    assert "cannot hold the model" in message
    assert "16597393408 bytes (15829Mi)" in message  # 16060522496 + 256 MiB + 256 MiB
    assert "charged to the memory cgroup" in message


@pytest.mark.parametrize("limit", ["15829Mi", "16Gi", "17G", "1.5Ti", 16597393408])
def test_memory_limit_large_enough_is_kept(limit: str | int) -> None:
    assert warmer_limit(SIDECAR, {"pagewarm.resources": {"limits": {"memory": limit}}}) == (
        chart.quantity_bytes(limit) if isinstance(limit, int) else _bytes(limit)
    )


def _bytes(quantity: str) -> int:
    if quantity.endswith("Ti"):
        return int(float(quantity[:-2]) * (1 << 40))
    return chart.quantity_bytes(quantity)


def test_partial_prewarm_can_be_accepted() -> None:
    overrides = {
        "pagewarm.resources": {"limits": {"memory": "8Gi"}},
        "memory.allowPartialPrewarm": True,
    }
    assert warmer_limit(SIDECAR, overrides) == 8 << 30


def test_init_memory_refusal_names_vllm() -> None:
    message = refusal(INIT, {"pagewarm.resources": {"limits": {"memory": "20Gi"}}})
    assert "the memory limits of vLLM and vllm.extraContainers" in message


def test_a_digest_pins_a_latest_tag() -> None:
    digest = "sha256:" + "b" * 64
    rendered = chart.render(SIDECAR, {"vllm.image.tag": "latest", "vllm.image.digest": digest})
    vllm = chart.container(chart.pod_spec(rendered.one("Deployment")), "vllm")
    assert vllm["image"] == f"vllm/vllm-openai:latest@{digest}"


@pytest.mark.parametrize(("size", "expected"), [("16Gi", 16 << 30), ("15.5G", 15_500_000_000)])
def test_model_size_takes_kubernetes_quantities(size: str, expected: int) -> None:
    """model.sizeBytes in the form limits take (it was refused as a string)."""
    required = expected + (512 << 20)  # the reserve and the headroom, 256 MiB each
    assert warmer_limit(SIDECAR, {"model.sizeBytes": size}) == -(-required // MiB) * MiB


def test_run_as_user_can_be_left_to_the_platform() -> None:
    """OpenShift's restricted SCC assigns a UID from the namespace's range: null is no
    UID at all (not 0, which runAsNonRoot would refuse)."""
    rendered = chart.render(SIDECAR, {"pagewarm.runAsUser": None})
    security = chart.container(chart.pod_spec(rendered.one("Deployment")), "pagewarm")[
        "securityContext"
    ]
    assert "runAsUser" not in security
    assert security["runAsNonRoot"] is True


def test_node_mode_needs_no_model() -> None:
    rendered = chart.render([chart.values_file("node")], {"model.path": "", "model.sizeBytes": 0})
    assert rendered.one("DaemonSet")

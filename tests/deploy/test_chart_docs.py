"""Every value is documented: in values.schema.json (with a description, and the schema
refuses keys it does not know) and in the README's values table; values.yaml, the schema
and the README list the same keys."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tests.deploy import chart

SCHEMA: dict[str, Any] = json.loads((chart.CHART / "values.schema.json").read_text())
README = (chart.CHART / "README.md").read_text()


# Helm passes `global` to every subchart, with keys of the other charts too: it is the one
# object the schema leaves open; the keys the chart reads in it are documented all the same.
OPEN = {"global"}


def walked_into(schema: dict[str, Any], key: str) -> bool:
    closed = schema.get("additionalProperties") is False or key in OPEN
    return bool(schema.get("properties")) and closed and not is_resources(schema)


def schema_leaves(schema: dict[str, Any], key: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Dotted keys of the chart's own values (objects it defines are walked into; free-form
    Kubernetes objects such as resources or affinity are leaves)."""
    properties = schema.get("properties")
    if schema.get("type") == "object" and properties and walked_into(schema, key):
        for name, sub in properties.items():
            yield from schema_leaves(sub, f"{key}.{name}" if key else name)
    else:
        yield key, schema


def is_resources(schema: dict[str, Any]) -> bool:
    return set(schema.get("properties", {})) == {"limits", "requests", "claims"}


def values_leaves(values: Any, schema: dict[str, Any], key: str = "") -> Iterator[str]:
    properties = schema.get("properties")
    if isinstance(values, dict) and properties and walked_into(schema, key):
        for name, value in values.items():
            assert name in properties, f"{key}.{name} is in values.yaml but not in the schema"
            yield from values_leaves(value, properties[name], f"{key}.{name}" if key else name)
    else:
        yield key


def test_the_schema_is_closed_and_described() -> None:
    def walk(schema: dict[str, Any], key: str) -> None:
        if schema.get("type") == "object" and "properties" in schema:
            assert (schema.get("additionalProperties") is False) != (key in OPEN), key
            if is_resources(schema):
                return  # Kubernetes' ResourceRequirements: limits/requests map resource names
            for name, sub in schema["properties"].items():
                walk(sub, f"{key}.{name}" if key else name)

    walk(SCHEMA, "")
    for key, leaf in schema_leaves(SCHEMA):
        assert leaf.get("description"), f"{key} has no description in values.schema.json"


def test_values_yaml_and_schema_list_the_same_keys() -> None:
    in_values = set(values_leaves(chart.values_yaml(), SCHEMA))
    in_schema = {key for key, _ in schema_leaves(SCHEMA)}
    assert in_values == in_schema


def test_every_value_is_in_the_readme_table() -> None:
    table = dict(re.findall(r"^\| `([\w.]+)` \| `[^|]*` \| (.+) \|$", README, re.MULTILINE))
    in_schema = {key for key, _ in schema_leaves(SCHEMA)}
    assert set(table) == in_schema
    assert all(description.strip() for description in table.values())


def test_every_value_has_a_comment_in_values_yaml() -> None:
    lines = (chart.CHART / "values.yaml").read_text().splitlines()
    stack: list[str] = []
    commented: set[str] = set()
    previous_comment = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            previous_comment = previous_comment or stripped.startswith("# --")
            continue
        match = re.match(r"^(\s*)([\w.-]+):", line)
        if match:
            depth = len(match.group(1)) // 2
            stack = [*stack[:depth], match.group(2)]
            if previous_comment:
                commented.add(".".join(stack))
        previous_comment = False
    missing = {key for key, _ in schema_leaves(SCHEMA)} - commented
    assert not missing, f"values without a '# --' comment: {sorted(missing)}"


def test_the_grafana_folder_annotation_says_what_it_needs() -> None:
    """A `grafana_folder` annotation does nothing on a stock kube-prometheus-stack: the
    README and the value's description name the Grafana sidecar settings it needs."""
    readme = " ".join(README.split())
    for setting in ("folderAnnotation: grafana_folder", "foldersFromFilesStructure: true"):
        assert setting in readme, setting
    description = SCHEMA["properties"]["monitoring"]["properties"]["dashboards"]["properties"][
        "annotations"
    ]["description"]
    assert "folderAnnotation" in description and "foldersFromFilesStructure" in description

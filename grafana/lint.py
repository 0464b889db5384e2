"""A lint pass over dashboard JSON, in the spirit of grafana/dashboard-linter, plus the
conventions of pagewarm's dashboards.

    python -m grafana.lint grafana/*.json     # prints problems, exits 1 when there are any

Rules (the name in brackets is what a problem reports):
- [dashboard]      uid, title, tags, an integer schemaVersion, annotations.list.
- [template-datasource] a ``datasource`` variable of type datasource for Prometheus.
- [template-variables]  query variables read from ``${datasource}`` with ``label_values``,
                   refresh on load or time change, All = ``.*``; every variable is used, and
                   every ``$variable`` a query uses is defined (or one of Grafana's own).
- [panel-datasource] every panel and every query reads from ``${datasource}``.
- [panel-ids]      panel ids are positive and unique.
- [panel-title]    titles are present and unique.
- [panel-units]    every panel sets a unit Grafana knows (or a custom suffix:/prefix:).
- [panel-description] every panel says what it shows and what to do when it looks bad:
                   at least 100 characters, with an "If ..." (or "When ...").
- [panel-options]  options are an object (Grafana's panels do not expect null).
- [panel-grid]     panels fit the 24-column grid and do not overlap.
- [target-refid]   each query has a unique refId.
- [target-rate-interval] rate/irate use ``[$__rate_interval]``; increase uses it too, or
                   the fixed 1 h or 24 h window of a count of rare events ("loads in the
                   last hour": a per-second rate of a few events a day reads as noise); no
                   other range is fixed: longer windows belong in recording rules.
- [target-filters] raw pagewarm series are filtered by cluster, namespace, node, pod and
                   instance, and per-model series by model too; recorded series are ones the
                   rules file records, filtered by cluster and by the labels their level
                   names (namespace, node, model).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.models import units

RULES_FILE = Path(__file__).resolve().parent.parent / "alerts" / "pagewarm.rules.yml"
DATASOURCE_UIDS = {"${datasource}", "$datasource"}
# Grafana's own variables, usable in any query.
BUILT_IN_VARIABLES = {
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__dashboard",
    "__org",
    "__user",
}
TARGET_FILTERS = ("cluster", "namespace", "node", "pod", "instance")
# Labels a recording keeps when its level (level:metric:operation) names them.
RECORDED_FILTERS = ("namespace", "node", "model")
# Fixed windows increase() may count rare events over.
EVENT_WINDOWS = {"1h", "24h"}
# pagewarm series without a model label: the node, its devices, the process itself.
NOT_PER_MODEL = (
    "pagewarm_memory_",
    "pagewarm_io_scheduler_",
    "pagewarm_block_device_",
    "pagewarm_collector_",
    "pagewarm_build_info",
    "pagewarm_sample_store_",
    "pagewarm_sidecar_",
)
MIN_DESCRIPTION = 100
KNOWN_UNITS = frozenset(
    value for value in vars(units).values() if isinstance(value, str) and not value.startswith("__")
)

_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?(?!\s*\()")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase)\s*\(")
_RANGE = re.compile(r"\[([^\]]+)\]")
_ADVICE = re.compile(r"\b(if|when)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Problem:
    dashboard: str
    where: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.where}: [{self.rule}] {self.message}"


def recorded_series(rules_file: Path = RULES_FILE) -> set[str]:
    """The names the rules file records."""
    document = yaml.safe_load(rules_file.read_text())
    return {
        rule["record"]
        for group in document.get("groups", [])
        for rule in group.get("rules", [])
        if "record" in rule
    }


def panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels of collapsed rows."""
    for panel in document.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(document: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every panel."""
    for panel in panels(document):
        for target in panel.get("targets", []) or []:
            yield panel, target


def lint(document: dict[str, Any], recorded: set[str] | None = None) -> list[Problem]:
    recorded = recorded_series() if recorded is None else recorded
    name = str(document.get("uid") or document.get("title") or "?")
    found: list[tuple[str, str, str]] = []
    found += _dashboard(document)
    found += _variables(document)
    found += _panels(document)
    for panel, target in queries(document):
        found += _target(panel, target, recorded)
    return [Problem(name, where, rule, message) for where, rule, message in found]


def _dashboard(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = [
        ("dashboard", "dashboard", f"no {key}") for key in ("uid", "title") if not document.get(key)
    ]
    if not document.get("tags"):
        out.append(("dashboard", "dashboard", "no tags (dashboard links find each other by tag)"))
    if not isinstance(document.get("schemaVersion"), int):
        out.append(("dashboard", "dashboard", "no integer schemaVersion"))
    annotations = document.get("annotations")
    if not isinstance(annotations, dict) or not isinstance(annotations.get("list"), list):
        out.append(("dashboard", "dashboard", "annotations.list missing: Grafana reads it"))
    return out


def _variables(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    variables = document.get("templating", {}).get("list", [])
    by_name = {v.get("name"): v for v in variables}
    datasource = by_name.get("datasource")
    if not datasource or datasource.get("type") != "datasource":
        out.append(("templating", "template-datasource", "no datasource variable"))
    elif datasource.get("query") != "prometheus":
        out.append(("templating", "template-datasource", "datasource variable not Prometheus"))
    used = _used_variables(document)
    for variable in variables:
        where = f"variable {variable.get('name')}"
        if variable.get("name") not in used:
            out.append((where, "template-variables", "defined but used by no query"))
        if variable.get("type") != "query":
            continue
        if (variable.get("datasource") or {}).get("uid") not in DATASOURCE_UIDS:
            out.append((where, "template-variables", "does not read from ${datasource}"))
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if not isinstance(text, str) or not re.fullmatch(r"label_values\(.+,\s*\w+\)", text):
            out.append((where, "template-variables", f"query is not label_values(...): {text!r}"))
        if variable.get("refresh") not in (1, 2):
            out.append((where, "template-variables", "refresh must be on load or time change"))
        if variable.get("includeAll") and variable.get("allValue") != ".*":
            out.append((where, "template-variables", 'All must be ".*" (labels may be absent)'))
    defined = set(by_name) | BUILT_IN_VARIABLES
    for where, text in _texts_with_variables(document):
        for match in _VARIABLE.finditer(text):
            referenced = match.group(1) or match.group(2)
            if referenced not in defined:
                out.append((where, "template-variables", f"${referenced} is not defined"))
    return out


def _texts_with_variables(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel, target in queries(document):
        yield f"panel {panel.get('id')} target {target.get('refId')}", str(target.get("expr", ""))
    for variable in document.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and isinstance(text, str):
            yield f"variable {variable.get('name')}", text


def _used_variables(document: dict[str, Any]) -> set[str]:
    used = set()
    for _, text in _texts_with_variables(document):
        used |= {m.group(1) or m.group(2) for m in _VARIABLE.finditer(text)}
    for panel in panels(document):
        used |= {m.group(1) or m.group(2) for m in _VARIABLE.finditer(json.dumps(panel))}
    return used


def _panels(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    ids: dict[Any, int] = {}
    titles: dict[str, int] = {}
    occupied: dict[tuple[int, int], Any] = {}
    for panel in panels(document):
        pid = panel.get("id")
        where = f"panel {pid} ({panel.get('title')!r})"
        ids[pid] = ids.get(pid, 0) + 1
        if not isinstance(pid, int) or pid <= 0:
            out.append((where, "panel-ids", "id must be a positive integer"))
        title = panel.get("title") or ""
        if not title:
            out.append((where, "panel-title", "no title"))
        titles[title] = titles.get(title, 0) + 1
        out += _grid(where, panel, occupied)
        if panel.get("type") == "row":
            continue
        out += _panel(where, panel)
    out += [
        (f"panel {pid}", "panel-ids", "id used more than once") for pid, n in ids.items() if n > 1
    ]
    out += [
        (f"{t!r}", "panel-title", "title used more than once") for t, n in titles.items() if n > 1
    ]
    return out


def _panel(where: str, panel: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    if (panel.get("datasource") or {}).get("uid") not in DATASOURCE_UIDS:
        out.append((where, "panel-datasource", "panel does not read from ${datasource}"))
    unit = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit")
    if not unit:
        out.append((where, "panel-units", "no unit"))
    elif unit not in KNOWN_UNITS and not unit.startswith(("suffix:", "prefix:")):
        out.append((where, "panel-units", f"unknown unit {unit!r}"))
    description = panel.get("description") or ""
    if len(description) < MIN_DESCRIPTION or not _ADVICE.search(description):
        out.append(
            (
                where,
                "panel-description",
                f"needs a description of {MIN_DESCRIPTION}+ characters that says what to do "
                "when it looks bad (an 'If ...')",
            )
        )
    if not isinstance(panel.get("options"), dict):
        out.append((where, "panel-options", "options must be an object"))
    if not panel.get("targets"):
        out.append((where, "target-refid", "panel has no query"))
    ref_ids = [t.get("refId") for t in panel.get("targets") or []]
    if any(not r for r in ref_ids) or len(set(ref_ids)) != len(ref_ids):
        out.append((where, "target-refid", f"refIds must be present and unique: {ref_ids}"))
    return out


def _grid(
    where: str, panel: dict[str, Any], occupied: dict[tuple[int, int], Any]
) -> list[tuple[str, str, str]]:
    grid = panel.get("gridPos") or {}
    x, y, w, h = (grid.get(k) for k in ("x", "y", "w", "h"))
    if not all(isinstance(v, int) for v in (x, y, w, h)):
        return [(where, "panel-grid", "gridPos needs integer x, y, w, h")]
    assert isinstance(x, int) and isinstance(y, int) and isinstance(w, int) and isinstance(h, int)
    if x < 0 or w <= 0 or h <= 0 or x + w > 24:
        return [(where, "panel-grid", f"outside the 24-column grid: {grid}")]
    out = []
    for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
        if cell in occupied:
            out.append((where, "panel-grid", f"overlaps panel {occupied[cell]}"))
            break
        occupied[cell] = panel.get("id")
    return out


def _target(
    panel: dict[str, Any], target: dict[str, Any], recorded: set[str]
) -> list[tuple[str, str, str]]:
    where = f"panel {panel.get('id')} target {target.get('refId')}"
    expr = str(target.get("expr") or "")
    out = []
    if (target.get("datasource") or {}).get("uid") not in DATASOURCE_UIDS:
        out.append((where, "panel-datasource", "query does not read from ${datasource}"))
    if not expr.strip():
        return [*out, (where, "target-refid", "empty query")]
    counted: set[int] = set()  # where the fixed event windows of increase() are
    for match in _RANGE_FUNCTION.finditer(expr):
        window = _RANGE.search(expr, match.end())
        text = window.group(1).strip() if window else ""
        if match.group(1) == "increase" and window and text in EVENT_WINDOWS:
            counted.add(window.start())
        elif text != "$__rate_interval":
            out.append(
                (where, "target-rate-interval", f"{match.group(1)}() without $__rate_interval")
            )
    out += [
        (where, "target-rate-interval", f"fixed range [{window.group(1)}]")
        for window in _RANGE.finditer(expr)
        if not window.group(1).strip().startswith("$") and window.start() not in counted
    ]
    out += _filters(where, expr, recorded)
    return out


def _filters(where: str, expr: str, recorded: set[str]) -> list[tuple[str, str, str]]:
    out = []
    for match in _SELECTOR.finditer(expr):
        metric, matchers_text = match.group(1), match.group(2) or ""
        matchers = {m.group(1): (m.group(2), m.group(3)) for m in _MATCHER.finditer(matchers_text)}
        if ":" in metric:
            if metric not in recorded:
                out.append((where, "target-filters", f"{metric} is not recorded by the rules"))
            level = metric.split(":")[0].split("_")
            required = ["cluster", *(label for label in RECORDED_FILTERS if label in level)]
            out += [
                (where, "target-filters", f'{metric} lacks {label}=~"${label}"')
                for label in required
                if level != ["pagewarm"] and matchers.get(label) != ("=~", f"${label}")
            ]
            continue
        if not metric.startswith("pagewarm_"):
            continue
        required = list(TARGET_FILTERS)
        if not metric.startswith(NOT_PER_MODEL):
            required.append("model")
        out += [
            (where, "target-filters", f'{metric} lacks {label}=~"${label}"')
            for label in required
            if matchers.get(label) != ("=~", f"${label}")
        ]
    return out


def lint_file(path: Path, recorded: set[str] | None = None) -> list[Problem]:
    return lint(json.loads(path.read_text()), recorded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.lint", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    recorded = recorded_series()
    problems = [p for path in args.files for p in lint_file(path, recorded)]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

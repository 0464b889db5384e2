"""What every pagewarm panel shares, so that each dashboard module only says what it shows.

Every helper takes the title, the description (what to do when the panel looks bad), the
unit and the queries as required arguments: a panel without them cannot be built. Each
panel and each query reads from the ``$datasource`` variable; raw pagewarm series are
filtered by the ``cluster``/``namespace``/``node``/``pod``/``instance`` (and ``model``)
variables through ``TARGET`` and ``MODEL``; recorded series (``level:metric:operation``,
from alerts/pagewarm.rules.yml) keep only the labels their level names, and are filtered on
those (``RECORDED_LOADS`` for the per-namespace load-time recordings).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from grafana_foundation_sdk.builders import (
    bargauge,
    heatmap,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import prometheus as prometheus_models

DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label matchers for the raw series of one exporter or sidecar target, and of one model.
# `node` is the node the target runs on (the chart's monitors set it from the pod), `cluster`
# is there where Prometheus has one (external labels, or a federating/remote-write setup).
TARGET = (
    'cluster=~"$cluster", namespace=~"$namespace", node=~"$node", pod=~"$pod", '
    'instance=~"$instance"'
)
MODEL = f'model=~"$model", {TARGET}'
# The per-namespace load-time recordings (namespace_model_mode:...): no node or pod label.
RECORDED_LOADS = 'cluster=~"$cluster", namespace=~"$namespace", model=~"$model"'

# The I/O scheduler of each device, aggregated to the labels tables show (without
# __name__, job, namespace or pod, which would keep Grafana's merge from joining rows).
SCHEDULER_BY_DEVICE = f"max by (node, device, scheduler) (pagewarm_io_scheduler_info{{{TARGET}}})"

# The metric that every pagewarm target serves, whatever it watches: the variables list
# namespaces, pods and instances from it.
TARGET_METRIC = "pagewarm_build_info"

GRID_WIDTH = 24


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL query of a panel. ``instant`` for tables, stats and bar gauges."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True, slots=True)
class Size:
    width: int = 12
    height: int = 8


@dataclass(frozen=True, slots=True)
class ValueText:
    """A value mapping: show ``text`` (in ``color``) for ``value``."""

    value: str
    text: str
    color: str


@dataclass(frozen=True, slots=True)
class ColumnUnit:
    """A table column (after renaming) with its own unit."""

    column: str
    unit: str


@dataclass(slots=True)
class Dashboard:
    """A dashboard in the making: rows of panels, laid out left to right."""

    title: str
    uid: str
    description: str
    per_model: bool = True  # offers the model variable (sidecar series have no model label)
    builder: dashboard_builders.Dashboard = field(init=False)

    def __post_init__(self) -> None:
        self.builder = (
            dashboard_builders.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(["pagewarm"])
            .time("now-24h", "now")
            .refresh("1m")
            .timezone("browser")
            .tooltip(models.DashboardCursorSync.CROSSHAIR)
            .link(
                dashboard_builders.DashboardLink("pagewarm dashboards")
                .type(models.DashboardLinkType.DASHBOARDS)
                .tags(["pagewarm"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )
        for variable in variables(self.per_model):
            self.builder.with_variable(variable)

    def row(self, title: str) -> None:
        self.builder.with_row(dashboard_builders.Row(title))

    def panel(self, panel: Builder[models.Panel]) -> None:
        self.builder.with_panel(panel)

    def build(self) -> models.Dashboard:
        """The dashboard, with panel ids numbered in order (the SDK leaves them unset)."""
        built = self.builder.build()
        for number, panel in enumerate(built.panels or [], start=1):
            panel.id_val = number
        return built


# Grafana's own "Annotations & Alerts" query, which every dashboard it saves carries.
BUILT_IN_ANNOTATION = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


def render(dashboard: models.Dashboard) -> str:
    """The committed form: sorted keys, two-space indent, a final newline."""
    document = json.loads(JSONEncoder().encode(dashboard))
    _as_grafana_saves_it(document)
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _as_grafana_saves_it(document: dict[str, object]) -> None:
    """Two fixes to the SDK's output, so that every Grafana 10+ loads it as its own:
    ``annotations`` must hold a ``list`` (the SDK writes ``{}``, and Grafana reads
    ``annotations.list``), and variables carry no ``id`` (the SDK writes the same zero UUID
    on each; Grafana's variable state is keyed by id, falling back to the name)."""
    document["annotations"] = {"list": [BUILT_IN_ANNOTATION]}
    templating = document.get("templating")
    if isinstance(templating, dict):
        for variable in templating.get("list", []):
            variable.pop("id", None)


def variables(per_model: bool = True) -> list[Builder[models.VariableModel]]:
    """datasource, then cluster -> namespace -> node -> pod -> instance (-> model), each
    narrowing the next."""
    chain = [
        ("cluster", "Cluster", "Cluster of the target (where Prometheus has the label)."),
        ("namespace", "Namespace", "Kubernetes namespace of the target."),
        ("node", "Node", "Node the target runs on (the chart's monitors set it)."),
        ("pod", "Pod", "Pod of the exporter (DaemonSet) or of the model server (sidecar)."),
        ("instance", "Instance", "Scrape target (host:port)."),
    ]
    built: list[Builder[models.VariableModel]] = [
        dashboard_builders.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .description("The Prometheus that scrapes the pagewarm exporters and sidecars.")
    ]
    for index, (name, label, description) in enumerate(chain):
        matchers = ", ".join(f'{before}=~"${before}"' for before, _, _ in chain[:index])
        built.append(_label_variable(name, label, TARGET_METRIC, matchers, description))
    if per_model:
        built.append(
            _label_variable(
                "model",
                "Model",
                "pagewarm_model_size_bytes",
                TARGET,
                "Model name, as in the model label (org/name for a Hugging Face cache entry).",
            )
        )
    return built


def _label_variable(
    name: str, label: str, metric: str, matchers: str, description: str
) -> dashboard_builders.QueryVariable:
    # All = ".*", which also matches series without the label (outside Kubernetes there is
    # no namespace or pod label, and the dashboards must still show everything).
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(
            f"label_values({metric}{{{matchers}}}, {name})"
            if matchers
            else f"label_values({metric}, {name})"
        )
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(models.VariableOption(selected=True, text="All", value="$__all"))
    )


def _targets(
    queries: Sequence[Query],
    form: prometheus_models.PromQueryFormat = prometheus_models.PromQueryFormat.TABLE,
) -> list[prometheus.Dataquery]:
    targets = []
    for index, query in enumerate(queries):
        target = (
            prometheus.Dataquery()
            .expr(query.expr)
            .ref_id(chr(ord("A") + index))
            .datasource(DATASOURCE)
            .legend_format(query.legend or "__auto")
        )
        if query.instant:
            target.instant().format(form)
        else:
            target.range()
            if form is prometheus_models.PromQueryFormat.HEATMAP:
                target.format(form)
        targets.append(target)
    return targets


def _mappings(values: Sequence[ValueText]) -> list[models.ValueMapping]:
    options = {
        v.value: models.ValueMappingResult(text=v.text, color=v.color, index=i)
        for i, v in enumerate(values)
    }
    return [models.ValueMap(options=options)]


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    size: Size = Size(),
    *,
    bars: bool = False,
    min_value: float | None = None,
    max_value: float | None = None,
    dashed: str | None = None,
) -> timeseries.Panel:
    """A time series. ``dashed``: a regex of series names drawn dashed (baselines)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(_targets(queries)))
        .unit(unit)
        .span(size.width)
        .height(size.height)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(60 if bars else 10)
        .show_points(common.VisibilityMode.AUTO)
        .span_nulls(False)
    )
    if min_value is not None:
        panel.min(min_value)
    if max_value is not None:
        panel.max(max_value)
    if dashed is not None:
        panel.override_by_regexp(
            dashed,
            [
                models.DynamicConfigValue(
                    id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
                )
            ],
        )
    return panel


def stat_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    size: Size = Size(6, 4),
    *,
    mappings: Sequence[ValueText] = (),
    text: common.BigValueTextMode = common.BigValueTextMode.VALUE_AND_NAME,
    decimals: int | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(_targets(queries)))
        .unit(unit)
        .span(size.width)
        .height(size.height)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .text_mode(text)
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
    )
    if mappings:
        panel.mappings(_mappings(mappings))
    if decimals is not None:
        panel.decimals(decimals)
    return panel


def bargauge_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    size: Size = Size(),
    *,
    min_value: float = 0,
    max_value: float | None = None,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
) -> bargauge.Panel:
    """Horizontal bars, one per series; ``steps``: thresholds (None: the base colour)."""
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(_targets(queries)))
        .unit(unit)
        .span(size.width)
        .height(size.height)
        .min(min_value)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .show_unfilled(True)
        .thresholds(
            dashboard_builders.ThresholdsConfig()
            .mode(models.ThresholdsMode.ABSOLUTE)
            .steps([models.Threshold(value=value, color=color) for value, color in steps])
        )
    )
    if max_value is not None:
        panel.max(max_value)
    return panel


def _table(
    title: str, description: str, unit: str, queries: Sequence[Query], size: Size
) -> table.Panel:
    """What every table shares: instant queries, a header, compact rows, no footer."""
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(_targets(queries)))
        .unit(unit)
        .span(size.width)
        .height(size.height)
        .show_header(True)
        .cell_height(common.TableCellHeight.SM)
        .footer(common_builders.TableFooterOptions().show(False).reducer(["sum"]))
    )


def table_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    size: Size = Size(),
    *,
    columns: dict[str, str],
    column_units: Sequence[ColumnUnit] = (),
    column_mappings: dict[str, Sequence[ValueText]] | None = None,
    sort_by: str | None = None,
) -> table.Panel:
    """Instant queries merged into one table. ``columns``: the fields to show, in order,
    with their header (a query's value is ``Value #<refId>``); every other field is hidden.
    ``unit`` applies to the value columns that have no unit of their own."""
    panel = (
        _table(title, description, unit, queries, size)
        # merge: one row per label set; filterFieldsByName: the listed fields only (the
        # labels a cluster adds vary); organize: their order and headers.
        .with_transformation(models.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            models.DataTransformerConfig(
                id_val="filterFieldsByName", options={"include": {"names": list(columns)}}
            )
        )
        .with_transformation(
            models.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {},
                    "indexByName": {name: i for i, name in enumerate(columns)},
                    "renameByName": columns,
                },
            )
        )
    )
    for column_unit in column_units:
        panel.override_by_name(
            column_unit.column,
            [models.DynamicConfigValue(id_val="unit", value=column_unit.unit)],
        )
    for column, values in (column_mappings or {}).items():
        panel.override_by_name(
            column,
            [
                models.DynamicConfigValue(id_val="mappings", value=_mappings(values)),
                models.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-text"}
                ),
            ],
        )
    if sort_by is not None:
        panel.sort_by([common_builders.TableSortByFieldState().display_name(sort_by).desc(True)])
    return panel


def heatmap_panel(
    title: str, description: str, unit: str, query: Query, size: Size = Size()
) -> heatmap.Panel:
    """A heatmap of a histogram's buckets (``query`` sums them by ``le``): Grafana reads the
    buckets as they are, no calculation of its own."""
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(_targets([query], prometheus_models.PromQueryFormat.HEATMAP)))
        .unit(unit)
        .span(size.width)
        .height(size.height)
        .calculate(False)
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .y_axis(heatmap.YAxisConfig().unit(unit).min(0))
        .cell_values(heatmap.CellValues().unit("short"))
        .show_value(common.VisibilityMode.AUTO)
        .show_legend()
        .show_tooltip()
        .show_y_histogram()
    )


def matrix_panel(
    title: str,
    description: str,
    unit: str,
    query: Query,
    size: Size = Size(),
    *,
    rows: str,
    columns: str,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
) -> table.Panel:
    """One instant query as a matrix: a row per value of the label ``rows``, a column per
    value of ``columns``, each cell coloured by ``steps`` (Grafana's grouping to matrix)."""
    return (
        _table(title, description, unit, [query], size)
        .with_transformation(
            models.DataTransformerConfig(
                id_val="groupingToMatrix",
                options={
                    "columnField": columns,
                    "rowField": rows,
                    "valueField": "Value",
                    "emptyValue": "empty",
                },
            )
        )
        .thresholds(
            dashboard_builders.ThresholdsConfig()
            .mode(models.ThresholdsMode.ABSOLUTE)
            .steps([models.Threshold(value=value, color=color) for value, color in steps])
        )
        .override_by_regexp(
            f"^(?!{rows}\\\\{columns}$).*",
            [
                models.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-background"}
                )
            ],
        )
    )

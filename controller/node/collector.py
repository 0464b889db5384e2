"""Collector ``node``: the warm map as metrics, built fresh from the agent's last
published map on every collection (NODE_CONTRACT.md; the agent never sets ``node``:
Prometheus adds it from the scrape target)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from controller.node.agent import NodeAgent
from controller.node.state import NodeMap
from exporter.collectors.base import counter, gauge


class NodeCollector:
    name = "node"

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        node_map = self.agent.map
        warm = gauge(
            "pagewarm_model_warm",
            "1 when the model's resident ratio reached the warm threshold (it turns 0 only "
            "below threshold - hysteresis), 0 otherwise.",
            ["model"],
        )
        rewarm = counter(
            "pagewarm_node_rewarm_bytes", "Bytes the keep-warm re-read, per model.", ["model"]
        )
        thrashing = gauge(
            "pagewarm_node_model_thrashing",
            "1 while the model was evicted more often than allowed in the window: not re-read.",
            ["model"],
        )
        priority = gauge(
            "pagewarm_node_model_priority",
            "The model's priority (higher: warmed first).",
            ["model"],
        )
        for model in node_map.models:
            labels = [model.name]
            warm.add_metric(labels, 1.0 if model.warm else 0.0)
            rewarm.add_metric(labels, model.rewarm_bytes_total)
            thrashing.add_metric(labels, 1.0 if model.thrashing else 0.0)
            priority.add_metric(labels, model.priority)
        backoffs = counter(
            "pagewarm_node_backoffs",
            "Keep-warm passes that held back re-reading, by reason (memory_pressure: PSI "
            "above the threshold or its hold-off; budget: the memory budget was spent; "
            "thrashing: a model evicted too often).",
            ["reason"],
        )
        for reason, count in node_map.backoffs.items():
            backoffs.add_metric([reason], count)
        yield from (warm, rewarm, thrashing, priority, backoffs)
        yield from self._node(node_map)

    def _node(self, node_map: NodeMap) -> Iterator[Metric]:
        if node_map.budget_bytes is not None:
            budget = gauge(
                "pagewarm_node_budget_bytes",
                "The memory budget of the last pass that re-read: MemAvailable or the "
                "cgroup's headroom, whichever is smaller, less the reserve.",
            )
            budget.add_metric([], node_map.budget_bytes)
            yield budget
        valid = gauge(
            "pagewarm_node_config_valid",
            "0 while the newest config file version is refused (the last good one is in force).",
        )
        valid.add_metric([], 1.0 if node_map.config.valid else 0.0)
        passes = counter("pagewarm_node_passes", "Keep-warm passes run.")
        passes.add_metric([], node_map.passes)
        holding = gauge(
            "pagewarm_node_hold_off_seconds",
            "Seconds left of the hold-off after memory pressure (0: not holding off).",
        )
        holding.add_metric([], node_map.hold_off_seconds_left)
        yield from (valid, passes, holding)
        if node_map.memory_pressure is not None:
            pressure = gauge(
                "pagewarm_node_memory_pressure_ratio",
                "PSI memory 'some' of the agent's cgroup (or the node): avg10 or the recent "
                "stalled share, whichever is higher, as a ratio.",
            )
            pressure.add_metric([], node_map.memory_pressure / 100)
            yield pressure

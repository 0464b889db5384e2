"""pagewarm node: keep a node's models warm and publish the warm map (DaemonSet mode)."""

from __future__ import annotations

import argparse
import asyncio
import gc
from functools import partial

import structlog

from controller.commands import common, flags
from controller.node.settings import NodeSettings
from controller.units import format_bytes, format_ratio

log = structlog.get_logger("pagewarm")

DESCRIPTION = """\
Keep the models of this node warm in the page cache, and tell the scheduler where they
are warm. The agent of the chart's node mode (a DaemonSet), one per node.

Each --interval, cachestat tells which ranges of which model are resident; only what is
missing is read back, highest priority first, rate-limited (--rate-limit, node-wide),
within the memory budget (MemAvailable and the agent's cgroup, less --reserve). It never
fights the kernel: under memory pressure (PSI 'some' above the threshold) it holds
off; a model evicted more than N times in a window is not re-read (reported thrashing);
when the budget is short, a lower priority is left partial before a higher one loses pages.

The warm map, three ways: metrics (pagewarm_model_warm{model}, back-offs, re-read bytes,
budget; plus the exporter's per-model series) on /metrics, the JSON map on /status, and
a Node Feature Discovery feature file <--nfd-features-dir>/pagewarm with one line
pagewarm.io/warm-<slug>=true per warm model: NFD labels the node (no API access needed).

config (YAML or JSON, re-read when it changes; a broken new version keeps the last good):
  models:
    - {name: llama-3-8b, path: /models/llama-3-8b, priority: 100}
    - {name: qwen-7b, path: /models/qwen-7b}          # priority 0

examples:
  pagewarm node --config /etc/pagewarm/models.yaml \\
      --nfd-features-dir /etc/kubernetes/node-feature-discovery/features.d \\
      --node-name "$NODE_NAME" --interval 30s --port 9741
  pagewarm node --models-dir /models --rate-limit 200MiB/s
  pagewarm node --config models.yaml --once --json     # one pass, print the map, exit

settings (environment): PAGEWARM_NODE_CONFIG, PAGEWARM_MODELS_DIR,
PAGEWARM_NFD_FEATURES_DIR, PAGEWARM_NODE_NAME, PAGEWARM_NODE_INTERVAL, PAGEWARM_HOST,
PAGEWARM_PORT, PAGEWARM_NODE_RATE_LIMIT, PAGEWARM_NODE_RESERVE,
PAGEWARM_NODE_WARM_THRESHOLD, PAGEWARM_NODE_WARM_HYSTERESIS,
PAGEWARM_NODE_PRESSURE_THRESHOLD, PAGEWARM_NODE_PRESSURE_HOLD_OFF,
PAGEWARM_NODE_THRASH_EVICTIONS, PAGEWARM_NODE_THRASH_WINDOW.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "node",
        help="keep this node's models warm; publish the warm map (metrics, NFD labels)",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    # Every value flag is bound to its setting: validated by NodeSettings with the
    # environment (sizes, durations, bounds), refused in the same words as the variable.
    models = parser.add_mutually_exclusive_group()
    flag = partial(flags.setting_flag, settings=NodeSettings)
    flag(
        models, "--config", setting="node_config", metavar="FILE", help="the models (YAML or JSON)"
    )
    flag(
        models,
        "--models-dir",
        setting="models_dir",
        metavar="DIR",
        help="every model in DIR, at one priority",
    )
    flag(
        parser,
        "--nfd-features-dir",
        setting="nfd_features_dir",
        metavar="DIR",
        help="NFD's features.d",
    )
    flag(
        parser,
        "--node-name",
        setting="node_name",
        default="the host name",
        metavar="NAME",
        help="this node's name",
    )
    flag(
        parser,
        "--interval",
        setting="node_interval",
        default="30s",
        metavar="DURATION",
        help="between passes",
    )
    flag(parser, "--host", setting="host", help="address to listen on")
    flag(parser, "--port", setting="port", help="0 for any free one")
    flag(
        parser,
        "--rate-limit",
        setting="node_rate_limit",
        metavar="SIZE/s",
        default="unlimited",
        help="node-wide re-read rate",
    )
    flag(
        parser,
        "--reserve",
        setting="node_reserve",
        default="256MiB",
        metavar="SIZE",
        help="memory always left free",
    )
    flag(
        parser,
        "--warm-threshold",
        setting="node_warm_threshold",
        metavar="RATIO",
        help="resident ratio that is warm",
    )
    flag(
        parser,
        "--pressure-threshold",
        setting="node_pressure_threshold",
        metavar="PERCENT",
        help="PSI memory 'some' share that holds re-reads off",
    )
    flag(
        parser,
        "--hold-off",
        setting="node_pressure_hold_off",
        default="60s",
        metavar="DURATION",
        help="after memory pressure",
    )
    flag(
        parser,
        "--thrash-evictions",
        setting="node_thrash_evictions",
        metavar="N",
        help="evictions allowed in the window before a model counts as thrashing",
    )
    flag(
        parser,
        "--thrash-window",
        setting="node_thrash_window",
        default="600s",
        metavar="DURATION",
        help="for them",
    )
    parser.add_argument("--once", action="store_true", help="one pass, print the map, exit")
    common.add_json(parser)
    parser.set_defaults(func=run, settings_class=NodeSettings)


def run(args: argparse.Namespace, settings: NodeSettings) -> int:
    # Imported here: the other commands never pay for the agent (and aiohttp).
    from controller.node.agent import NodeAgent  # noqa: PLC0415
    from controller.node.config import ConfigFile, ModelsDirectory  # noqa: PLC0415

    if settings.node_config is not None:
        source: ConfigFile | ModelsDirectory = ConfigFile(settings.node_config)
    elif settings.models_dir is not None:
        source = ModelsDirectory(settings.models_dir)
    else:
        raise common.UsageError(
            "no models to keep warm: give --config FILE or --models-dir DIR (or set "
            "PAGEWARM_NODE_CONFIG or PAGEWARM_MODELS_DIR)"
        )
    agent = NodeAgent(settings, source)
    if args.once:
        node_map = agent.run_pass()
        if args.json:
            common.print_json(node_map.document())
        else:
            _print_map(node_map.document())
        return 0
    log.info(
        "node agent starting",
        node=settings.node_name,
        source=source.status().source,
        interval_seconds=settings.node_interval,
        features=str(agent.features.path) if agent.features else None,
        pressure=str(agent.pressure_path) if agent.pressure_path else None,
    )
    from controller.node.app import run as serve_agent  # noqa: PLC0415

    gc.collect()
    gc.freeze()  # what lives now lives as long as the process: out of the GC's passes
    try:
        asyncio.run(serve_agent(agent))
    except OSError as exc:
        log.error("cannot listen", host=settings.host, port=settings.port, error=str(exc))  # noqa: TRY400
        return 1
    return 0


def _print_map(document: dict[str, object]) -> None:
    print(f"node {document['node']}")
    models = document["models"]
    assert isinstance(models, list)
    for model in models:
        state = "warm" if model["warm"] else ("thrashing" if model["thrashing"] else "cold")
        print(
            f"  {model['name']:<32} {state:<9} {format_ratio(model['resident_ratio']):>7} "
            f"of {format_bytes(model['size_bytes'])}  priority {model['priority']}"
            + (f"  ({model['error']})" if model["error"] else "")
        )

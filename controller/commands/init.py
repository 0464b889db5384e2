"""pagewarm init: the classic init container: pre-warm the model, then exit."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

import structlog
from pydantic import Field

from controller.commands import common
from controller.commands.prewarm import (
    add_prewarm_options,
    exit_status,
    prewarm_with_progress,
    report,
)
from controller.prewarm import PrewarmResult
from controller.samplestore import SampleStore
from controller.sampling import SampleHeader, Setup
from controller.settings import BenchSettings
from controller.sidecar.record import SampleContext, prewarm_sample
from exporter.models import ModelSpec
from exporter.weightset import WeightSet

log = structlog.get_logger("pagewarm")

DESCRIPTION = """\
Pre-warm MODEL_PATH into the page cache and exit: the init-container form of the
sidecar (an init container runs to completion before vLLM starts). Same engine and
memory guard as `pagewarm prewarm`; the run is recorded as a pre-warm sample (source
"init") in the sample store, for the exporter's pagewarm_prewarm_* metrics.

A model larger than the memory budget (MemAvailable and the container's memory cgroup
limit, minus the reserve) is warmed up to the budget, in load order: that is success,
with a warning; the rest loads from storage. Remember that the page cache stays charged
to the init container's cgroup (the pod's) after it exits.

exit status: 0 warmed (also partial because of the memory budget), 1 some files could
not be read, files changed before their turn (warmed as they are now), or no memory
budget at all (the reserve is larger than the headroom: nothing could be warmed), 2
MODEL_PATH unusable (missing, not readable, no weight files) or bad input, 143 stopped by
SIGTERM before the warm finished.

examples:
  pagewarm init /models/llama-3-8b
  MODEL_PATH=/models/llama-3-8b pagewarm init --reserve 2GiB
  pagewarm init /models/llama-3-8b --rate-limit 500MiB --samples /state/samples.jsonl
"""

EXIT_TERMINATED = 128 + signal.SIGTERM


class InitSettings(BenchSettings):
    model_name: str | None = Field(default=None, description="The model label in the sample.")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "init",
        help="pre-warm the model and exit (Kubernetes init container)",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    common.add_model_path(parser)
    parser.add_argument(
        "--model-name",
        default=None,
        help="the model label in the sample (default: $PAGEWARM_MODEL_NAME or from the path)",
    )
    common.add_samples(parser)
    add_prewarm_options(parser)
    common.add_json(parser)
    parser.set_defaults(func=run, settings_class=InitSettings)


def run(args: argparse.Namespace, settings: InitSettings) -> int:
    weight_set = common.weight_set(args, settings)
    cancel = threading.Event()

    def terminated(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: stopping the warm")
        cancel.set()

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        result = prewarm_with_progress(weight_set, args, settings, cancel)
    finally:
        signal.signal(signal.SIGTERM, previous)
    _record(args, settings, weight_set, result)
    report(result, as_json=args.json)
    if cancel.is_set():
        return EXIT_TERMINATED
    return exit_status(result)


def _record(
    args: argparse.Namespace, settings: InitSettings, weight_set: WeightSet, result: PrewarmResult
) -> None:
    """A pre-warm sample; a store that cannot be written (read-only root filesystem without
    a state volume) costs the sample, never the warm."""
    context = SampleContext(
        SampleHeader(
            source="init",
            model=ModelSpec(weight_set.root, args.model_name or settings.model_name).label,
            weight_set=weight_set,
            setup=Setup.detect(weight_set.root, settings.sysfs_root),
        )
    )
    store = SampleStore(args.samples or settings.samples)
    try:
        store.append(prewarm_sample(context, result))
    except OSError as exc:
        log.warning(
            "pre-warm sample not recorded",
            store=str(store.path),
            error=exc.strerror or str(exc),
            hint="set PAGEWARM_SAMPLES to a writable volume",
        )

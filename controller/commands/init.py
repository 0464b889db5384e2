"""pagewarm init: the classic init container: pre-warm the model, then exit."""

from __future__ import annotations

import argparse

import structlog
from pydantic import Field

from controller.commands import common, flags
from controller.commands.prewarm import (
    add_prewarm_options,
    prewarm_with_progress,
    report,
)
from controller.interrupts import interruptible
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

exit status: 0 warmed (also partial because of the memory budget), and also when no
memory budget existed at all or files changed before their turn: a pre-warm never holds
a pod back, so those are recorded as failed samples and logged as errors, and vLLM starts
with what is resident. 1 some files could not be read (vLLM could not read them either),
2 MODEL_PATH unusable (missing, not readable, no weight files) or bad input, 130/143
stopped by SIGINT/SIGTERM before the warm finished (the partial warm is recorded).

examples:
  pagewarm init /models/llama-3-8b
  MODEL_PATH=/models/llama-3-8b pagewarm init --reserve 2GiB
  pagewarm init /models/llama-3-8b --rate-limit 500MiB --samples /state/samples.jsonl
"""


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
    flags.setting_flag(
        parser,
        "--model-name",
        settings=InitSettings,
        setting="model_name",
        metavar="NAME",
        default="from the path",
        help="the model label in the sample",
    )
    common.add_samples(parser)
    add_prewarm_options(parser)
    common.add_json(parser)
    parser.set_defaults(func=run, settings_class=InitSettings)


def run(args: argparse.Namespace, settings: InitSettings) -> int:
    weight_set = common.weight_set(args, settings)
    with interruptible() as interrupt, interrupt.polled() as cancel:
        result = prewarm_with_progress(weight_set, args, settings, cancel)
    _record(settings, weight_set, result)
    report(result, as_json=args.json)
    if interrupt.exit_status is not None:
        return interrupt.exit_status
    return init_exit_status(result)


def init_exit_status(result: PrewarmResult) -> int:
    """Unlike `prewarm`, only unreadable files fail an init container: a failing init
    container is restarted with back-off and its pod never starts, which would turn a node
    short of memory, or a model rewritten under the warm, into an outage."""
    return 1 if result.file_errors else 0


def _record(settings: InitSettings, weight_set: WeightSet, result: PrewarmResult) -> None:
    """A pre-warm sample; a store that cannot be written (read-only root filesystem without
    a state volume) costs the sample, never the warm."""
    context = SampleContext(
        SampleHeader(
            source="init",
            model=ModelSpec(weight_set.root, settings.model_name).label,
            weight_set=weight_set,
            setup=Setup.detect(weight_set.root, settings.sysfs_root),
        )
    )
    store = SampleStore(settings.samples)
    try:
        store.append(prewarm_sample(context, result))
    except OSError as exc:
        log.warning(
            "pre-warm sample not recorded",
            store=str(store.path),
            error=exc.strerror or str(exc),
            hint="set PAGEWARM_SAMPLES to a writable volume",
        )

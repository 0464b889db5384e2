"""pagewarm exporter: serve Prometheus metrics about models' page-cache state."""

from __future__ import annotations

import argparse
import asyncio
import gc
from functools import partial
from pathlib import Path

import structlog

from controller.commands import common, flags
from exporter.models import ModelSources, ModelSpec
from exporter.settings import ExporterSettings

log = structlog.get_logger("pagewarm")

DESCRIPTION = """\
Serve Prometheus metrics about model weights on this node: page-cache residency per
model (and per file), the block devices and I/O schedulers serving them, the memory a
pre-warm can use, and load and pre-warm durations from the sample store.

It only observes: nothing on the host is changed. Every scrape looks at the models again
(a model's tree is listed again when its directories changed), so a model replaced by a
new revision, or one that vanished, is reported as it is now.
Residency needs the files' owner or CAP_FOWNER; without it, residency is reported as
untrusted (pagewarm_model_residency_trusted 0), never as a made-up figure.

Serves /metrics (Prometheus text or OpenMetrics), /healthz and a landing page at /.

Series: per model, about ten (present, files, size, resident bytes and ratio, trusted,
dirty, evicted, recently evicted, device), plus per file two (size and resident bytes)
when models are named one by one. With --models-dir (a node's whole cache) per-file series
are off unless --per-file-series turns them on (to debug a model, say).

examples:
  pagewarm exporter --model-path /models/llama-3-8b
  pagewarm exporter --model-path /models/a --model-path /models/b --port 9741
  pagewarm exporter --models-dir ~/.cache/huggingface/hub      # each models--org--name
  pagewarm exporter --models-dir /models --host 127.0.0.1
  pagewarm exporter --models-dir /models --per-file-series   # per-file series too
  MODEL_PATH=/models/llama-3-8b PAGEWARM_MODEL_NAME=llama pagewarm exporter

settings (environment): PAGEWARM_MODEL_PATHS (a,b or JSON list), PAGEWARM_MODELS_DIR,
PAGEWARM_MODEL_NAME, PAGEWARM_HOST, PAGEWARM_PORT, PAGEWARM_SAMPLES,
PAGEWARM_PER_FILE_SERIES (true, false or auto), PAGEWARM_FILE_SERIES_LIMIT,
PAGEWARM_COLLECTION_MAX_AGE_SECONDS, PAGEWARM_SCRAPE_TIMEOUT_SECONDS,
PAGEWARM_IDLE_TIMEOUT_SECONDS.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "exporter",
        help="serve Prometheus metrics (residency, devices, load times)",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    common.add_model_path(parser)
    parser.add_argument(
        "--model-path",
        dest="model_paths",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="a model to watch; repeat for several (default: $MODEL_PATH, $PAGEWARM_MODEL_PATHS)",
    )
    flag = partial(flags.setting_flag, parser, settings=ExporterSettings)
    flag(
        "--models-dir",
        setting="models_dir",
        metavar="DIR",
        help="watch every model in DIR: each subdirectory, or each Hugging Face cache entry",
    )
    flag(
        "--model-name",
        setting="model_name",
        metavar="NAME",
        default="from the path",
        help="the model label, when one model path is given",
    )
    common.add_server_options(parser, "/metrics", " to read load times from")
    flags.setting_switch(
        parser,
        "--per-file-series",
        settings=ExporterSettings,
        setting="per_file_series",
        help="series per weight file (pagewarm_file_*{model,file}) besides the per-model "
        "ones; unset: on for models named one by one, off with --models-dir",
    )
    flag(
        "--file-series-limit",
        setting="file_series_limit",
        metavar="N",
        help="per-file series per model at most, 0 for none",
    )
    parser.set_defaults(func=run, settings_class=ExporterSettings)


def sources_from(args: argparse.Namespace, settings: ExporterSettings) -> ModelSources:
    """Models from the flags when any is given, else from the environment."""
    given = flags.given(args)
    flag_paths = [*([args.model_path] if args.model_path else []), *args.model_paths]
    if flag_paths or "models_dir" in given:
        paths = list(dict.fromkeys(flag_paths))
        models_dir = settings.models_dir if "models_dir" in given else None
    else:
        from_env = ModelSources.from_settings(settings)
        paths, models_dir = [m.path for m in from_env.models], from_env.models_dir
    if not paths and models_dir is None:
        raise common.UsageError(
            "no models to watch: give --model-path PATH (repeatable) or --models-dir DIR, "
            "or set MODEL_PATH, PAGEWARM_MODEL_PATHS or PAGEWARM_MODELS_DIR"
        )
    if models_dir is not None and models_dir.exists() and not models_dir.is_dir():
        # Missing is fine (a volume mounted later); a file never holds models.
        raise common.UsageError(f"models directory {models_dir} is not a directory")
    if "model_name" in given and len(paths) != 1:
        raise common.UsageError(
            f"--model-name names one model, but {len(paths)} model paths are given; "
            "without it each model is named after its path"
        )
    name = settings.model_name if len(paths) == 1 else None
    return ModelSources(tuple(ModelSpec(p, name) for p in paths), models_dir)


def run(args: argparse.Namespace, settings: ExporterSettings) -> int:
    sources = sources_from(args, settings)
    log.info(
        "exporter starting",
        models=[str(m.path) for m in sources.models],
        models_dir=str(sources.models_dir) if sources.models_dir else None,
        samples=str(settings.samples),
    )
    # aiohttp is imported here, not at the top: the other commands never pay for it.
    from exporter.server import create_app, serve  # noqa: PLC0415

    app = create_app(settings, sources)
    # What is alive now (modules, settings, the app) lives as long as the process: keep it
    # out of the collector's full passes, which otherwise walk ~200k objects (~20 ms).
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(
            serve(
                app,
                host=settings.host,
                port=settings.port,
                idle_timeout_seconds=settings.idle_timeout_seconds,
            )
        )
    except OSError as exc:
        log.error(  # noqa: TRY400 - the reason is the message; a traceback adds nothing
            "cannot listen", host=settings.host, port=settings.port, error=str(exc)
        )
        return 1
    return 0

"""pagewarm synth: write a synthetic Llama-shaped safetensors model."""

from __future__ import annotations

import argparse

from controller.commands import common
from controller.units import format_bytes, format_rate
from exporter.settings import CommonSettings

DESCRIPTION = """\
Write a synthetic, valid safetensors model: bf16 Llama-shaped tensors of random data
(never zeros) in SHARDS files, with model.safetensors.index.json and config.json. For
demos, tests and benchmarks; loads with the safetensors library and transformers' config.

The weights come within 0.1% below --size; a size below one layer of the narrowest shape
(about 7MiB) is refused. A directory that holds anything is refused unless --force (its
config.json and shards of the same names would be overwritten).

exit status: 0 written, 2 bad input (nothing written).

examples:
  pagewarm synth /tmp/model --size 2GiB --shards 4
  pagewarm synth /data/llama-16g --size 16GiB --shards 8 --threads 16
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic safetensors model",
        description=DESCRIPTION,
        formatter_class=common.Formatter,
    )
    common.add_model_path(parser)
    parser.add_argument(
        "--size",
        type=common.size_arg,
        default=common.size_arg("2GiB"),
        help="about this many bytes of weights (e.g. 4GiB)",
    )
    parser.add_argument("--shards", type=int, default=4, help="number of .safetensors files")
    parser.add_argument("--threads", type=int, default=4, help="parallel writers")
    parser.add_argument(
        "--force", action="store_true", help="write into a directory that is not empty"
    )
    common.add_json(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: CommonSettings) -> int:
    try:
        from controller.synth import synth  # noqa: PLC0415 - needs numpy (the bench extra)
    except ImportError as exc:
        raise common.UsageError(
            f"synth needs numpy: pip install 'pagewarm[bench]' ({exc})"
        ) from None
    if args.shards < 1 or args.threads < 1:
        raise common.UsageError("--shards and --threads must be at least 1")
    path = common.model_path(args, settings)
    if path.exists() and not path.is_dir():
        raise common.UsageError(f"{path} exists and is not a directory")
    with common.progress("synth", args.size) as update:
        result = synth(
            path,
            args.size,
            args.shards,
            threads=args.threads,
            force=args.force,
            on_progress=lambda done, _total: update(done),
        )
    if args.json:
        common.print_json(
            {
                "path": str(result.path),
                "files": [str(f) for f in result.files],
                "total_bytes": result.total_bytes,
                "seconds": round(result.seconds, 3),
                "throughput_bytes_per_second": round(result.throughput_bytes_per_second),
                "layers": result.shape.layers,
                "hidden_size": result.shape.hidden,
            }
        )
    else:
        print(
            f"wrote {format_bytes(result.total_bytes)} in {len(result.files)} shards "
            f"to {result.path} in {result.seconds:.1f} s "
            f"({format_rate(result.throughput_bytes_per_second)}); "
            f"{result.shape.layers} layers, hidden {result.shape.hidden}"
        )
    return 0

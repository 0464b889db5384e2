"""The pagewarm command line: one subcommand per module under controller.commands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import pydantic
import structlog

from controller.commands.common import Formatter
from controller.settings import ControllerSettings
from exporter import __version__
from exporter.errors import UserError
from exporter.logconfig import configure_logging

# Each module has register(subparsers); its parser sets func=run(args, settings) and may
# set settings_class to a subclass of ControllerSettings.
COMMAND_MODULES = (
    "controller.commands.status",
    "controller.commands.prewarm",
    "controller.commands.profile",
    "controller.commands.evict",
    "controller.commands.synth",
    "controller.commands.exporter",
    "controller.commands.measure",
    "controller.commands.bench",
    "controller.commands.report",
    "controller.commands.samples",
    "controller.commands.scheduler",
    "controller.commands.sidecar",
    "controller.commands.init",
    "controller.commands.node",
)

DESCRIPTION = """\
pagewarm measures and controls LLM cold starts: how much of a model's weights is in
the page cache, pre-warming it at the storage's speed, and eviction.

Every command takes MODEL_PATH as its first argument, or reads the MODEL_PATH
environment variable (as vLLM deployments set it). Settings come from PAGEWARM_*
environment variables; flags win over them.

examples:
  pagewarm synth /tmp/model --size 2GiB        # a synthetic safetensors model
  pagewarm status /tmp/model                   # what is in the page cache
  pagewarm evict /tmp/model                    # drop exactly these pages
  pagewarm prewarm /tmp/model                  # read it back, as fast as the disk allows
  pagewarm bench /tmp/model --runs 3 --out out # cold/warm/pre-warmed loads, timed
  pagewarm report --out out                    # CSV, markdown and plot from the samples
  pagewarm <command> --help                    # each command's own examples
"""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line, only the command it names is registered."""
    parser = argparse.ArgumentParser(
        prog="pagewarm", description=DESCRIPTION, formatter_class=Formatter
    )
    parser.add_argument("--version", action="version", version=f"pagewarm {__version__}")
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=None,
        help="log rendering (default: $PAGEWARM_LOG_FORMAT or auto: console on a terminal)",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in command_modules(argv):
        importlib.import_module(name).register(subparsers)
    return parser


def command_modules(argv: Sequence[str] | None) -> Sequence[str]:
    """The module of the command ``argv`` names (by module name), alone: each command then
    imports only what it needs, and a long-running one (the exporter) does not carry the
    others' memory. Every module when none is named: --help, errors listing commands."""
    by_name = {module.rsplit(".", 1)[1]: module for module in COMMAND_MODULES}
    for arg in argv or ():
        if arg == "--":
            break
        if arg in by_name:
            return (by_name[arg],)
    return COMMAND_MODULES


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse cannot take an optional MODEL_PATH and a trailing command line together,
    so for commands that set ``takes_command`` (measure, bench: ``-- COMMAND ...``) what
    follows the first ``--`` becomes ``args.command``. Other commands parse as before."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    if "--" in argv:
        at = argv.index("--")
        head, tail = argv[:at], argv[at + 1 :]
        known, _ = parser.parse_known_args(head)
        if getattr(known, "takes_command", False):
            args = parser.parse_args(head)
            args.command = tail
            return args
    args = parser.parse_args(argv)
    if getattr(args, "takes_command", False):
        args.command = []
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = structlog.get_logger("pagewarm")
    try:
        settings_class: type[ControllerSettings] = getattr(
            args, "settings_class", ControllerSettings
        )
        settings = settings_class()
    except pydantic.ValidationError as exc:
        print(f"pagewarm: invalid setting in the environment:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_format or settings.log_format, args.log_level or settings.log_level)
    try:
        return int(args.func(args, settings))
    except UserError as exc:
        log.error(str(exc))  # noqa: TRY400 - a user's mistake needs no traceback
        return 2
    except BrokenPipeError:
        # stdout closed early (`pagewarm status --json | head`): not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The pagewarm command line: one subcommand per module under controller.commands."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

import structlog

from controller.commands.common import Formatter
from controller.commands.flags import given, load_settings
from controller.interrupts import Interrupted
from controller.settings import ControllerSettings
from exporter import __version__
from exporter.errors import UserError
from exporter.logconfig import configure_logging

log = structlog.get_logger("pagewarm")

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
    parser.add_argument(
        "--debug",
        action="store_true",
        help="debug logs, and the traceback of an error (also PAGEWARM_LOG_LEVEL=debug)",
    )
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
    """Runs the command; every way it can end is one line and an exit status: a user's
    mistake 2, an I/O failure 1, a signal 128 + its number. --debug (or
    PAGEWARM_LOG_LEVEL=debug) adds the traceback."""
    args = parse_args(argv)
    debug = args.debug or os.environ.get("PAGEWARM_LOG_LEVEL", "").strip().lower() == "debug"
    try:
        settings_class: type[ControllerSettings] = getattr(
            args, "settings_class", ControllerSettings
        )
        settings = load_settings(settings_class, given(args))
    except UserError as exc:
        print(f"pagewarm: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        args.log_format or settings.log_format,
        "debug" if args.debug else args.log_level or settings.log_level,
    )
    return run_command(args, settings, debug=debug)


def run_command(args: argparse.Namespace, settings: ControllerSettings, *, debug: bool) -> int:
    try:
        return int(args.func(args, settings))
    except BrokenPipeError:
        # stdout closed early (`pagewarm status --json | head`): not an error of ours.
        sys.stderr.close()
        return 0
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        log.warning("interrupted", signal=signal.Signals(signum).name)
        return 128 + signum
    except Exception as exc:  # one line; the traceback with --debug
        status, message = failure(exc)
        log.error(message, exc_info=debug)  # noqa: TRY400 - the traceback only when asked
        return status


def failure(exc: Exception) -> tuple[int, str]:
    """The exit status and the line for an error: 2 a user's mistake, 1 an I/O failure
    (or a bug of ours, named as one)."""
    if isinstance(exc, UserError):
        return 2, str(exc)
    if isinstance(exc, OSError):
        return 1, describe_os_error(exc)
    return 1, f"internal error: {type(exc).__name__}: {exc} (--debug shows where)"


def describe_os_error(exc: OSError) -> str:
    """``path: reason`` (both paths for a rename), as the user can act on it."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
    return f"{where}: {reason}"


if __name__ == "__main__":
    sys.exit(main())

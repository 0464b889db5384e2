"""Flags bound to settings: one path from the command line and the environment to a
command's settings, through the settings model's validation.

A flag declared with ``setting_flag`` (or ``setting_switch``) is not parsed by argparse:
its text goes to the settings model with the environment's values (``load_settings``), so
``--threads 1000`` and ``PAGEWARM_PREWARM_THREADS=1000`` are accepted or refused alike, in
the same words; the message names whichever the value came from.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings
from pydantic_settings.exceptions import SettingsError as SourceError

from exporter.errors import UserError

GIVEN = "given_settings"  # the Namespace attribute that holds the flags given

ModelT = TypeVar("ModelT", bound=BaseModel)


class SettingsError(UserError):
    """A flag or an environment variable the settings model refuses."""


@dataclass(frozen=True, slots=True)
class GivenFlag:
    option: str  # as typed: --threads
    value: Any


class _SettingAction(argparse.Action):
    """Records the flag's value for its setting; ``value`` set: a switch (no argument)."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        *,
        setting: str,
        value: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, **kwargs)
        self.setting = setting
        self.value = value

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        option = option_string or self.option_strings[0]
        if self.nargs == 0:
            values = self.value if self.value is not None else not option.startswith("--no-")
        given = {**getattr(namespace, GIVEN, {}), self.setting: GivenFlag(option, values)}
        setattr(namespace, GIVEN, given)


Container = argparse.ArgumentParser | argparse._ArgumentGroup


def setting_flag(
    parser: Container,
    option: str,
    *,
    settings: type[BaseModel],
    setting: str,
    help: str,  # noqa: A002 - argparse's word
    metavar: str | None = None,
    default: str | None = None,
) -> None:
    """``option VALUE`` sets ``setting`` of ``settings``; the help names the environment
    variable and the default (``default``: the default as a user writes it)."""
    parser.add_argument(
        option,
        action=_SettingAction,
        setting=setting,
        metavar=metavar,
        help=f"{help} ({default_text(settings, setting, default)})",
    )


def setting_switch(
    parser: Container,
    option: str,
    *,
    settings: type[BaseModel],
    setting: str,
    help: str,  # noqa: A002 - argparse's word
    value: bool | None = None,
) -> None:
    """A switch: ``--x`` / ``--no-x`` set ``setting`` true / false (``value`` given: a
    one-way switch such as --no-memory-guard that sets it to ``value``)."""
    options = [option] if value is not None else [option, "--no-" + option.removeprefix("--")]
    parser.add_argument(
        *options,
        action=_SettingAction,
        setting=setting,
        nargs=0,
        value=value,
        help=f"{help} ({default_text(settings, setting, None)})",
    )


def env_name(settings: type[BaseModel], setting: str) -> str | None:
    """The environment variable of ``setting`` (None: a model without environment)."""
    if not issubclass(settings, BaseSettings):
        return None
    alias = settings.model_fields[setting].validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    prefix = settings.model_config.get("env_prefix") or ""
    return f"{prefix}{setting}".upper()


def default_text(settings: type[BaseModel], setting: str, default: str | None) -> str:
    field = settings.model_fields[setting]
    if default is None:
        value = field.default
        if value is PydanticUndefined and field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
        default = (
            "unset"
            if value is None
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
    env = env_name(settings, setting)
    text = f"default: ${env} or {default}" if env else f"default: {default}"
    return text.replace("%", "%%")  # argparse formats help with %


def given(args: argparse.Namespace) -> Mapping[str, GivenFlag]:
    return dict(getattr(args, GIVEN, {}))


def load_settings(settings: type[ModelT], flags: Mapping[str, GivenFlag]) -> ModelT:
    """``settings`` from the environment with ``flags`` applied over it, validated by the
    model; ``SettingsError`` names the flag or the variable a refused value came from."""
    unbound = [flag.option for name, flag in flags.items() if name not in settings.model_fields]
    if unbound:  # a flag declared on another settings class than its command's: a bug
        raise TypeError(f"{settings.__name__} has no setting for {', '.join(unbound)}")
    try:
        return settings(**{name: flag.value for name, flag in flags.items()})
    except ValidationError as exc:
        raise SettingsError(_describe(exc, settings, flags)) from None
    except SourceError as exc:
        raise SettingsError(_describe_source(exc, settings)) from None


def _describe(
    exc: ValidationError, settings: type[BaseModel], flags: Mapping[str, GivenFlag]
) -> str:
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        inner = [str(part) for part in error["loc"][1:] if isinstance(part, str)]
        message = ": ".join([*inner, message])
        if name in flags:
            problems.append(f"{flags[name].option} {flags[name].value}: {message}")
            continue
        env = env_name(settings, name) if name in settings.model_fields else name
        problems.append(f"{env}={os.environ.get(env or '', '')!r}: {message}")
    return "; ".join(problems)


def _describe_source(exc: SourceError, settings: type[BaseModel]) -> str:
    """pydantic-settings' own errors (a complex value that is not JSON) name the field."""
    text = str(exc)
    for name in settings.model_fields:
        if f'"{name}"' in text:
            env = env_name(settings, name)
            value = os.environ.get(env or "", "")
            return f"{env}={value!r}: not a valid value ({exc.__cause__ or text})"
    return text
